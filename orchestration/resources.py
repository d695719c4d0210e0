"""Dagster resources: the pipeline's only doors to storage, Feast and MLflow.

Each is a `ConfigurableResource` whose configuration differs by profile
(`orchestration.profiles`), so assets never know which backend they talk to
and tests swap a directory or a database URL instead of patching code.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from string import Template

import dagster as dg
import mlflow
import pandas as pd
import yaml
from feast import FeatureStore, RepoConfig

from orchestration.timestamps import lenient_utc

FEATURE_REPO = Path(__file__).resolve().parent.parent / "feature_repo"


class LakeResource(dg.ConfigurableResource):
    """The parquet lake: daily-partitioned raw tables and whole derived tables.

    Writes go to a temporary file renamed into place, so a crashed run never
    leaves half a partition, and re-running a partition replaces it: landing is
    idempotent.
    """

    root: str

    def table_path(self, table: str) -> Path:
        return Path(self.root) / f"{table}.parquet"

    def partition_path(self, table: str, day: str) -> Path:
        return Path(self.root) / table / f"date={day}" / "part-0.parquet"

    def artifact_dir(self, name: str) -> Path:
        path = Path(self.root) / "artifacts" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def write_partition(self, table: str, day: str, frame: pd.DataFrame) -> Path:
        return _atomic_parquet(self.partition_path(table, day), frame)

    def write_table(self, table: str, frame: pd.DataFrame) -> Path:
        return _atomic_parquet(self.table_path(table), frame)

    def _landed(self, table: str, exclude_days: Iterable[str] = ()) -> list[Path]:
        """Landed partition files of `table` in day order, but those of `exclude_days`."""
        skip = {f"date={day}" for day in exclude_days}
        files = sorted((Path(self.root) / table).glob("date=*/part-0.parquet"))
        return [p for p in files if p.parent.name not in skip]

    def read_partitions(self, table: str) -> pd.DataFrame:
        """Every landed partition, concatenated in day order."""
        paths = self._landed(table)
        if not paths:
            raise FileNotFoundError(f"{table}: no partition landed under {Path(self.root) / table}")
        return pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)

    def read_column(self, table: str, column: str, exclude_days: Iterable[str] = ()) -> pd.Series:
        """One column of every landed partition but `exclude_days` (empty if none)."""
        paths = self._landed(table, exclude_days)
        if not paths:
            return pd.Series([], dtype="float64", name=column)
        return pd.concat([pd.read_parquet(p, columns=[column])[column] for p in paths], ignore_index=True)

    def quarantine(self, table: str, day: str, frame: pd.DataFrame) -> Path:
        """Keep a rejected batch out of the lake proper, but not lost: it can be fixed and re-landed."""
        return _atomic_parquet(self.partition_path(f"quarantine/{table}", day), frame)

    def read_table(self, table: str) -> pd.DataFrame:
        path = self.table_path(table)
        if not path.exists():
            raise FileNotFoundError(f"{table}: {path} does not exist; materialise it first")
        return pd.read_parquet(path)


def _atomic_parquet(path: Path, frame: pd.DataFrame) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


class EventSourceResource(dg.ConfigurableResource):
    """Where raw events come from before they are landed: a directory of parquet files.

    Locally that is the simulator's output (`python -m simulator generate`);
    the stream consumer replaces it with what it reads off the bus.
    """

    path: str

    def _file(self, name: str) -> Path:
        file = Path(self.path) / f"{name}.parquet"
        if not file.exists():
            raise FileNotFoundError(
                f"{file} is missing: generate the source data first "
                f"(python -m simulator generate --out {self.path})"
            )
        return file

    def read(self, name: str) -> pd.DataFrame:
        return pd.read_parquet(self._file(name))

    def read_days(
        self, name: str, time_column: str, days: list[str], first_day: str
    ) -> dict[str, pd.DataFrame]:
        """Rows of `name` by UTC day of `time_column`, for the days asked.

        Times are parsed leniently for routing only (naive ones read as UTC);
        rows keep their raw values for the checks. A row that belongs to no
        partition (time missing or unparseable, before `first_day`, or today or
        later: no complete day yet) goes with the last day asked, where the
        checks flag it, instead of vanishing.
        """
        frame = self.read(name)
        if time_column in frame.columns:
            times = lenient_utc(frame[time_column])
        else:
            times = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[ns, UTC]")
        today = pd.Timestamp.now(tz="UTC").normalize()
        unroutable = times.isna() | (times < pd.Timestamp(first_day, tz="UTC")) | (times >= today)
        day = times.dt.strftime("%Y-%m-%d").where(~unroutable, max(days))
        return {d: frame[day == d].reset_index(drop=True) for d in days}


class FeastResource(dg.ConfigurableResource):
    """A Feast store from the profile's `feature_store.yaml`.

    The yaml keeps `${...}` placeholders so one file per profile serves every
    deployment; this resource fills them from its own configuration.
    """

    profile: str
    data_dir: str
    project: str = "fraudpipe"
    registry_url: str = ""
    redis_connection: str = ""

    def yaml_path(self) -> Path:
        return FEATURE_REPO / "profiles" / self.profile / "feature_store.yaml"

    def repo_config(self) -> RepoConfig:
        text = Template(self.yaml_path().read_text()).substitute(
            FEAST_PROJECT=self.project,
            DATA_DIR=self.data_dir,
            FEAST_REGISTRY_URL=self.registry_url,
            REDIS_CONNECTION=self.redis_connection,
        )
        config = RepoConfig(**yaml.safe_load(text))
        config.repo_path = FEATURE_REPO
        return config

    def store(self) -> FeatureStore:
        (Path(self.data_dir) / "feast").mkdir(parents=True, exist_ok=True)
        return FeatureStore(config=self.repo_config())


class MLflowResource(dg.ConfigurableResource):
    """MLflow tracking and model registry (SQLite locally, PostgreSQL in prod)."""

    tracking_uri: str
    artifact_root: str
    experiment_name: str = "fraud_model"
    model_name: str = "fraud_model"

    def activate(self) -> str:
        """Point the mlflow client at this store and return the experiment id."""
        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        experiment = mlflow.get_experiment_by_name(self.experiment_name)
        if experiment is not None:
            return str(experiment.experiment_id)
        Path(self.artifact_root).mkdir(parents=True, exist_ok=True)
        return str(
            mlflow.create_experiment(
                self.experiment_name, artifact_location=Path(self.artifact_root).resolve().as_uri()
            )
        )

    def client(self) -> mlflow.MlflowClient:
        return mlflow.MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
