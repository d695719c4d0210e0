"""Card-fraud transaction simulator, after the Fraud Detection Handbook.

Generates customers, terminals, transactions with three fraud scenarios, and
delayed fraud reports: the raw material of the rest of the pipeline. Drift
scenarios change the data from an onset day on, to exercise monitoring.
"""

from simulator.config import DRIFT_SCENARIOS, Drift, SimulatorConfig
from simulator.data import SimulatedData
from simulator.generate import simulate
from simulator.storage import read_dataset, write_dataset

__all__ = [
    "DRIFT_SCENARIOS",
    "Drift",
    "SimulatedData",
    "SimulatorConfig",
    "read_dataset",
    "simulate",
    "write_dataset",
]
