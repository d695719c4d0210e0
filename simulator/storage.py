"""Writing a dataset to Parquet files and reading it back."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from simulator.config import SimulatorConfig
from simulator.data import EVENT_COLUMNS, LABEL_COLUMNS, SimulatedData
from simulator.transactions import SECONDS_PER_DAY

FILES = {
    "customers": "customers.parquet",
    "terminals": "terminals.parquet",
    "transactions": "transactions.parquet",
    "fraud_reports": "fraud_reports.parquet",
    "ground_truth": "ground_truth.parquet",
    "config": "config.json",
}
"""File of each part of a dataset directory."""


def write_dataset(data: SimulatedData, out_dir: Path) -> dict[str, Path]:
    """Write a dataset as the pipeline's sources expect it.

    The labels go to their own file, apart from the events, so that the
    ingestion side can be given the events and the reports only, as a real
    system would be.

    Args:
        data: The dataset.
        out_dir: Directory to write into, created if missing; files there
            are overwritten.

    Returns:
        The path of each written file, keyed as in :data:`FILES`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / file for name, file in FILES.items()}
    data.customers.to_parquet(paths["customers"], index=False)
    data.terminals.to_parquet(paths["terminals"], index=False)
    data.events().to_parquet(paths["transactions"], index=False)
    data.fraud_reports.to_parquet(paths["fraud_reports"], index=False)
    data.transactions[LABEL_COLUMNS].to_parquet(paths["ground_truth"], index=False)
    config = None if data.config is None else asdict(data.config)
    paths["config"].write_text(json.dumps(config, indent=2) + "\n")
    return paths


def read_dataset(out_dir: Path) -> SimulatedData:
    """Read a dataset written by :func:`write_dataset`.

    The ground-truth transactions are rebuilt from the events and the labels;
    the simulation clock columns are recomputed from the configured start
    date (or, without a configuration, from midnight UTC of the first day).

    Args:
        out_dir: Directory holding the dataset files.

    Returns:
        The dataset, equal to the one written.

    Raises:
        FileNotFoundError: If a file of the dataset is missing, naming it.
    """
    out_dir = Path(out_dir)
    paths = {name: out_dir / file for name, file in FILES.items()}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"incomplete dataset in {out_dir}: missing {', '.join(missing)}")
    raw_config = json.loads(paths["config"].read_text())
    config = None if raw_config is None else SimulatorConfig(**raw_config)

    events = pd.read_parquet(paths["transactions"])
    labels = pd.read_parquet(paths["ground_truth"])
    transactions = events.merge(labels, on="TRANSACTION_ID", how="left", validate="one_to_one")
    if transactions["TX_FRAUD"].isna().any():
        raise ValueError(f"{paths['ground_truth']} lacks labels for some transactions")
    origin = (
        pd.Timestamp(config.start_date, tz="UTC")
        if config is not None
        else transactions["TX_DATETIME"].min().floor("D")
    )
    elapsed = (transactions["TX_DATETIME"] - origin).to_numpy()
    seconds = elapsed // np.timedelta64(1, "s")
    transactions.insert(len(EVENT_COLUMNS), "TX_TIME_SECONDS", seconds)
    transactions.insert(len(EVENT_COLUMNS) + 1, "TX_TIME_DAYS", seconds // SECONDS_PER_DAY)
    return SimulatedData(
        customers=pd.read_parquet(paths["customers"]),
        terminals=pd.read_parquet(paths["terminals"]),
        transactions=transactions,
        fraud_reports=pd.read_parquet(paths["fraud_reports"]),
        config=config,
    )
