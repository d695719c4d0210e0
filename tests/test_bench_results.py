"""Every benchmark table in the docs is a file measured on the code as it is now.

A change to measured code without re-running its bench, or a hand edit of a
table in a README, fails here with the command to run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import results
from bench.results import DOCS, MEASURED, check


def test_every_table_was_measured_on_the_current_code_and_the_docs_include_it() -> None:
    problems = check()
    assert not problems, "\n".join(f"{p.where}: {p.what}" for p in problems)


def test_each_bench_table_is_included_in_the_docs() -> None:
    included = {
        match
        for doc in DOCS
        for match in re.findall(r"<!-- include (bench/results/\w+\.md) -->", doc.read_text())
    }
    assert included >= {f"bench/results/{name}.md" for name in MEASURED}


def test_a_change_to_measured_code_makes_its_table_stale(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The guard itself: a copy of the repository's measured files with one byte changed."""
    for path in MEASURED["monitoring"]:
        source = results.ROOT / path
        files = (
            [source]
            if source.is_file()
            else [f for f in source.rglob("*.py") if "__pycache__" not in f.parts]
        )
        for file in files:
            target = tmp_path / file.relative_to(results.ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(file.read_bytes())
    original = results.fingerprint(MEASURED["monitoring"])
    monkeypatch.setattr(results, "ROOT", tmp_path)
    before = results.fingerprint(MEASURED["monitoring"])
    assert before == original  # the copy is the repository's code, path for path
    drift = tmp_path / "monitoring" / "drift.py"
    drift.write_text(drift.read_text() + "\n")
    assert results.fingerprint(MEASURED["monitoring"]) != before


def test_an_excluded_path_does_not_make_a_table_stale(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`!path` leaves code the bench never runs out of its fingerprint, and only that code."""
    for name in ("engine.py", "online/buffers.py"):
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_text("x = 1\n")
    monkeypatch.setattr(results, "ROOT", tmp_path)
    paths = ("pkg", "!pkg/online")
    before = results.fingerprint(paths)
    (tmp_path / "pkg" / "online" / "buffers.py").write_text("x = 2\n")
    assert results.fingerprint(paths) == before
    (tmp_path / "pkg" / "engine.py").write_text("x = 2\n")
    assert results.fingerprint(paths) != before
    assert results.describe(paths) == "pkg (not pkg/online)"
