"""The README's examples use the demo's own days, cards and terminals: after `make demo` they answer
from warm features, not from a cold start, and none names a day the demo has no data for."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from demo.cli import DEMO_DATASET
from serving.schemas import Transaction
from simulator import simulate

README = Path(__file__).resolve().parent.parent / "README.md"
SHELL_BLOCKS = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
SCORE_BODIES = [
    json.loads(body)
    for block in SHELL_BLOCKS
    for body in re.findall(r"curl [^\n]*/v1/score\b[^\n]*\\\n\s*-d '(\{.*?\})'", block)
]
DAY_ARGUMENTS = [
    day for block in SHELL_BLOCKS for day in re.findall(r"\b(?:FROM|TO)=(\d{4}-\d{2}-\d{2})", block)
]
WARM_DAYS = 7
"""A card or terminal with a payment in the week before is warm: its 1- and 7-day windows have data."""


@pytest.fixture(scope="module")
def demo_transactions() -> pd.DataFrame:
    return simulate(DEMO_DATASET).transactions


def test_the_readme_has_examples_to_check() -> None:
    assert SCORE_BODIES, "no `curl .../v1/score -d '{...}'` example found in README.md"
    assert DAY_ARGUMENTS, "no FROM=/TO= example found in README.md"


@pytest.mark.parametrize("body", SCORE_BODIES, ids=lambda b: f"tx{b.get('transaction_id')}")
def test_score_example_is_valid_and_warm_on_the_demo_data(
    body: dict, demo_transactions: pd.DataFrame
) -> None:
    request = Transaction.model_validate(body)
    at = pd.Timestamp(request.timestamp)
    first, last = demo_transactions["TX_DATETIME"].min(), demo_transactions["TX_DATETIME"].max()
    assert first <= at <= last.ceil("D"), f"{at} is outside the demo's data ({first:%F}..{last:%F})"
    week = demo_transactions[
        (demo_transactions["TX_DATETIME"] < at)
        & (demo_transactions["TX_DATETIME"] >= at - pd.Timedelta(days=WARM_DAYS))
    ]
    assert (week["CUSTOMER_ID"] == request.customer_id).any(), f"card {request.customer_id} is cold at {at}"
    assert (week["TERMINAL_ID"] == request.terminal_id).any(), (
        f"terminal {request.terminal_id} is cold at {at}"
    )
    assert not (demo_transactions["TRANSACTION_ID"] == request.transaction_id).any(), "reuses a demo id"


@pytest.mark.parametrize("day", DAY_ARGUMENTS)
def test_day_arguments_are_days_of_the_demo(day: str, demo_transactions: pd.DataFrame) -> None:
    days = demo_transactions["TX_DATETIME"].dt.strftime("%Y-%m-%d")
    assert days.min() <= day <= days.max(), f"{day} is outside the demo's data ({days.min()}..{days.max()})"
