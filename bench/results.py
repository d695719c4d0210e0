"""Benchmark tables as files stamped with the code that made them, and the docs that include them.

Each bench writes its table to `bench/results/<name>.md` with a stamp: the
commit, the date, the machine, the package versions and a fingerprint of the
code it measures (`MEASURED`). The READMEs include those files between
markers instead of copied numbers, and `tests/test_bench_results.py` fails
when a fingerprint no longer matches the code or an included copy differs
from its file: a table cannot go stale unnoticed.

    python -m bench.results           # refresh the included copies in the docs
    python -m bench.results --check   # exit 1 if a table is stale or a copy differs
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
QUICK_RESULTS = ROOT / "test-artifacts" / "bench"
"""Where `--quick` runs write: smoke runs never replace a measured table."""

DOCS = (ROOT / "bench" / "README.md", ROOT / "docs" / "scaling.md", ROOT / "docs" / "reliability.md")

MEASURED: dict[str, tuple[str, ...]] = {
    "training_set": (
        "feature_repo",
        "!feature_repo/online",
        "assets/training_set.py",
        "simulator",
        "bench/training_set.py",
        "bench/common.py",
    ),
    "model_quality": (
        "feature_repo",
        "!feature_repo/online",
        "assets/training_set.py",
        "simulator",
        "modeling",
        "bench/model_quality.py",
        "bench/common.py",
    ),
    "monitoring": ("monitoring", "bench/monitoring.py"),
    "capacity": ("streaming", "feature_repo", "simulator", "bench/capacity.py"),
    "serve": ("serving", "streaming", "feature_repo", "modeling", "bench/serve.py", "bench/loadgen.py"),
    "autoscale": (
        "serving",
        "settings/serving.py",
        "bench/autoscale.py",
        "bench/serve.py",
        "bench/loadgen.py",
    ),
    "chaos": (
        "streaming",
        "feature_repo/online",
        "serving",
        "modeling",
        "bench/chaos.py",
        "bench/redis_server.py",
        "bench/kafka_brokers.py",
        "bench/tmpfs.py",
        "bench/postgres_restart.py",
        "bench/tcp_proxy.py",
    ),
}
"""Each bench's code: a change to any of it makes the bench's table stale (`!path`: not measured)."""

MAKE_TARGET = {
    "training_set": "make bench-training-set",
    "model_quality": "make bench-model-quality",
    "monitoring": "make bench-monitoring",
    "capacity": "make bench-capacity",
    "serve": "make bench-serve",
    "autoscale": "make bench-autoscale",
    "chaos": "make chaos",
}

PACKAGES = (
    "numpy",
    "pandas",
    "pyarrow",
    "duckdb",
    "feast",
    "dagster",
    "mlflow",
    "xgboost",
    "scikit-learn",
    "evidently",
    "ray",
    "redis",
    "confluent-kafka",
    "fastapi",
    "uvicorn",
)

SOURCE_SUFFIXES = {".py", ".yaml", ".yml", ".json"}

_STAMP = re.compile(r"<!-- bench-result name=(?P<name>\w+) code=(?P<code>[0-9a-f]+) quick=(?P<quick>\w+) -->")
_INCLUDE = re.compile(r"(<!-- include (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- end include -->)", re.DOTALL)


def fingerprint(paths: tuple[str, ...]) -> str:
    """A hash of the measured source files' paths and contents (Python, YAML, JSON)."""
    digest = hashlib.sha256()
    files: list[Path] = []
    excluded = [ROOT / path[1:] for path in paths if path.startswith("!")]
    for path in paths:
        if path.startswith("!"):
            continue
        target = ROOT / path
        files += [target] if target.is_file() else sorted(target.rglob("*"))
    for file in files:
        if (
            file.is_file()
            and file.suffix in {".py", ".yaml", ".yml", ".json"}
            and "__pycache__" not in file.parts
            and not any(file.is_relative_to(skip) for skip in excluded)
        ):
            digest.update(file.relative_to(ROOT).as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def describe(paths: tuple[str, ...]) -> str:
    """The measured paths as a reader wants them: `a, b (not c)`."""
    kept = ", ".join(p for p in paths if not p.startswith("!"))
    skipped = ", ".join(p[1:] for p in paths if p.startswith("!"))
    return f"{kept} (not {skipped})" if skipped else kept


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> str:
    try:
        total_kib = int(Path("/proc/meminfo").read_text().split()[1])
        return f"{total_kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        return "unknown"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


@dataclass(frozen=True)
class Stamp:
    """What a table was measured on."""

    name: str
    code: str
    quick: bool
    commit: str
    date: str
    machine: str
    command: str
    packages: str

    def render(self) -> str:
        rows = [
            ("commit", self.commit),
            ("date", self.date),
            ("machine", self.machine),
            ("command", f"`{self.command}`"),
            ("packages", self.packages),
            ("measured code", f"{describe(MEASURED[self.name])}; fingerprint `{self.code}`"),
        ]
        table = "\n".join(f"| {key} | {value} |" for key, value in rows)
        return (
            f"<!-- bench-result name={self.name} code={self.code} quick={str(self.quick).lower()} -->\n"
            f"<!-- written by `{self.command}`: do not edit, re-run the bench -->\n\n"
            f"| run | |\n|---|---|\n{table}\n"
        )


def make_stamp(name: str, argv: list[str], quick: bool) -> Stamp:
    commit = _git("rev-parse", "--short=12", "HEAD") or "unknown"
    pathspecs = [f":(exclude){p[1:]}" if p.startswith("!") else p for p in MEASURED[name]]
    changed = _git("status", "--porcelain", "--untracked-files=no", "--", *pathspecs)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return Stamp(
        name=name,
        code=fingerprint(MEASURED[name]),
        quick=quick,
        commit=commit + (" with uncommitted changes to the measured code" if changed else ""),
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=(
            f"{os.cpu_count()} cores ({_cpu_model()}), {_memory_gib()}, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}; load average {load:.2f} at the end"
        ),
        command=" ".join(["python -m", f"bench.{name}", *argv]),
        packages=", ".join(f"{p} {_version(p)}" for p in PACKAGES),
    )


def add_results_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help=f"folder for the stamped table (default {RESULTS.relative_to(ROOT)}; "
        f"{QUICK_RESULTS.relative_to(ROOT)} with --quick)",
    )


def write_result(name: str, body: str, argv: list[str], quick: bool, folder: Path | None) -> Path:
    """Write `body` (the bench's title and tables) under its stamp; returns the file."""
    folder = folder or (QUICK_RESULTS if quick else RESULTS)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.md"
    path.write_text(f"{make_stamp(name, argv, quick).render()}\n{body.strip()}\n")
    print(f"[bench] wrote {path}", flush=True)
    return path


@dataclass(frozen=True)
class Problem:
    where: str
    what: str


def read_stamp(path: Path) -> dict[str, str]:
    match = _STAMP.search(path.read_text())
    if not match:
        raise ValueError(f"{path}: no bench-result stamp")
    return match.groupdict()


def check(refresh: bool = False) -> list[Problem]:
    """Stale tables and included copies that differ from their files; with `refresh`, mend the copies."""
    problems = []
    for name, paths in MEASURED.items():
        path = RESULTS / f"{name}.md"
        if not path.exists():
            problems.append(Problem(str(path), f"missing: run `{MAKE_TARGET[name]}`"))
            continue
        stamp = read_stamp(path)
        if stamp["quick"] != "false":
            problems.append(Problem(str(path), "a --quick run: run the full bench"))
        current = fingerprint(paths)
        if stamp["code"] != current:
            problems.append(
                Problem(
                    str(path),
                    f"measured on other code ({stamp['code']}, now {current}: {describe(paths)} changed): "
                    f"run `{MAKE_TARGET[name]}`",
                )
            )
    for doc in DOCS:
        text = doc.read_text()

        def include(match: re.Match[str], doc: Path = doc) -> str:
            source = ROOT / match["path"]
            content = source.read_text() if source.exists() else ""
            if match["body"] != content:
                problems.append(Problem(str(doc), f"its copy of {match['path']} differs from the file"))
            return match[1] + content + match[4]

        updated = _INCLUDE.sub(include, text)
        if refresh and updated != text:
            doc.write_text(updated)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument(
        "--check", action="store_true", help="only report; exit 1 on any problem (a refresh only reports)"
    )
    args = parser.parse_args(argv)
    problems = check(refresh=not args.check)
    remaining = check() if not args.check else problems
    for problem in remaining:
        print(f"{problem.where}: {problem.what}", file=sys.stderr)
    if not args.check:
        # A refresh after one bench must not fail on the others' tables: `--check` (the test) gates.
        print(f"docs refreshed from {RESULTS.relative_to(ROOT)}", flush=True)
        return 0
    return 1 if remaining else 0


if __name__ == "__main__":
    sys.exit(main())
