"""Card-fraud transaction simulator, after the Fraud Detection Handbook.

Generates customers, terminals, transactions with three fraud scenarios, and
delayed fraud reports: the raw material of the rest of the pipeline.
"""

from simulator.config import SimulatorConfig
from simulator.data import SimulatedData
from simulator.generate import simulate
from simulator.storage import read_dataset, write_dataset

__all__ = [
    "SimulatedData",
    "SimulatorConfig",
    "read_dataset",
    "simulate",
    "write_dataset",
]
