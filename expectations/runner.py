"""Run a Great Expectations suite on an in-memory frame and report it in plain words.

An ephemeral GX context: nothing is written to disk and no network is used.
Each failure is reported as "column: rule: count of total rows", which is
what a person fixing the data needs to read first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import great_expectations as gx
import great_expectations.execution_engine.pandas_execution_engine as gx_pandas
import pandas as pd
from great_expectations.data_context.types.base import ProgressBarsConfig

# GX fingerprints every in-memory frame under 1 GB, twice per validation: 35 s
# per text column of 1.75 M rows here, four times the validation itself. The
# fingerprint only serves GX's batch cache, which an ephemeral context never reuses.
gx_pandas.HASH_THRESHOLD = 0


@dataclass(frozen=True)
class Failure:
    """One expectation that did not hold."""

    column: str
    rule: str
    unexpected: int | None
    total: int
    detail: str = ""

    def __str__(self) -> str:
        column = self.column or "(table)"
        count = f"{self.unexpected} of {self.total} rows" if self.unexpected is not None else self.detail
        return f"{column}: {self.rule}: {count}"


@dataclass
class Report:
    suite: str
    rows: int
    evaluated: int
    failures: list[Failure] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        if self.success:
            return f"{self.suite}: {self.evaluated} expectations hold on {self.rows} rows"
        lines = "; ".join(str(f) for f in self.failures)
        failed = f"{len(self.failures)} of {self.evaluated} expectations failed"
        return f"{self.suite}: {failed} on {self.rows} rows: {lines}"

    def metadata(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "expectations": self.evaluated,
            "failed": len(self.failures),
            **{
                f"{f.column or 'table'} / {f.rule}": f.unexpected if f.unexpected is not None else f.detail
                for f in self.failures
            },
        }


_context: Any = None


def ensure_context() -> Any:
    """The process's ephemeral GX context; GX needs one before a suite can be built."""
    global _context
    if _context is None:
        _context = gx.get_context(mode="ephemeral")
        _context.variables.progress_bars = ProgressBarsConfig(globally=False)
        _context.data_sources.add_pandas("memory").add_dataframe_asset(
            "frame"
        ).add_batch_definition_whole_dataframe("whole")
    return _context


def new_suite(name: str) -> gx.ExpectationSuite:
    ensure_context()
    return gx.ExpectationSuite(name=name)


def _batch_definition() -> Any:
    return ensure_context().data_sources.get("memory").get_asset("frame").get_batch_definition("whole")


def validate(
    frame: pd.DataFrame, suite: gx.ExpectationSuite, renames: dict[str, str] | None = None
) -> Report:
    """Validate `frame` against `suite`.

    Args:
        frame: the batch.
        suite: the expectations.
        renames: helper column -> the column a person knows it as (e.g. a raw
            text copy of TX_AMOUNT is reported as TX_AMOUNT).
    """
    renames = renames or {}
    batch = _batch_definition().get_batch(batch_parameters={"dataframe": frame})
    result = batch.validate(suite, result_format="SUMMARY")
    failures = []
    for item in result.results:
        if item.success:
            continue
        config = item.expectation_config
        kwargs = dict(config.kwargs)
        column = str(kwargs.get("column", ""))
        exception = (item.exception_info or {}).get("exception_message")
        res = item.result or {}
        unexpected = res.get("unexpected_count")
        failures.append(
            Failure(
                column=renames.get(column, column),
                rule=config.description or config.type,
                unexpected=int(unexpected) if unexpected is not None else None,
                total=int(res.get("element_count") or len(frame)),
                detail=str(exception or res.get("observed_value", "")),
            )
        )
    return Report(suite=suite.name, rows=len(frame), evaluated=len(result.results), failures=failures)
