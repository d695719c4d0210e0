"""Customer and terminal profiles, and which terminals each customer uses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

GRID_SIZE = 100.0
"""Side of the square on which customers and terminals are placed."""


@dataclass(frozen=True)
class TerminalLists:
    """Each customer's usable terminals, in compressed-row form.

    A ragged list of lists would force a Python loop per customer when drawing
    terminals; flat arrays let one vectorised draw serve every transaction.

    Attributes:
        offsets: Start of customer ``c``'s terminals in ``terminal_ids``.
        counts: Number of terminals of each customer (0: makes no payment).
        terminal_ids: Concatenated terminal ids, sorted within a customer.
    """

    offsets: np.ndarray
    counts: np.ndarray
    terminal_ids: np.ndarray


def generate_customers(n_customers: int, rng: np.random.Generator) -> pd.DataFrame:
    """Draw customer profiles as the handbook does.

    Args:
        n_customers: Number of customers.
        rng: Random stream reserved for customers.

    Returns:
        One row per customer: ``CUSTOMER_ID``, location, and spending habits
        (``mean_amount``, ``std_amount``, ``mean_nb_tx_per_day``).
    """
    location = rng.uniform(0, GRID_SIZE, size=(n_customers, 2))
    mean_amount = rng.uniform(5, 100, size=n_customers)
    mean_nb_tx_per_day = rng.uniform(0, 4, size=n_customers)
    return pd.DataFrame(
        {
            "CUSTOMER_ID": np.arange(n_customers, dtype=np.int64),
            "x_customer_id": location[:, 0],
            "y_customer_id": location[:, 1],
            "mean_amount": mean_amount,
            "std_amount": mean_amount / 2,
            "mean_nb_tx_per_day": mean_nb_tx_per_day,
        }
    )


def generate_terminals(n_terminals: int, rng: np.random.Generator) -> pd.DataFrame:
    """Draw terminal locations uniformly on the grid.

    Args:
        n_terminals: Number of terminals.
        rng: Random stream reserved for terminals.

    Returns:
        One row per terminal: ``TERMINAL_ID``, ``x_terminal_id``, ``y_terminal_id``.
    """
    location = rng.uniform(0, GRID_SIZE, size=(n_terminals, 2))
    return pd.DataFrame(
        {
            "TERMINAL_ID": np.arange(n_terminals, dtype=np.int64),
            "x_terminal_id": location[:, 0],
            "y_terminal_id": location[:, 1],
        }
    )


def terminals_within_radius(customers: pd.DataFrame, terminals: pd.DataFrame, radius: float) -> TerminalLists:
    """Find, for every customer, the terminals at distance strictly below ``radius``.

    Two k-d trees find all close pairs in compiled code, near-linear in the
    number of pairs; the filter afterwards keeps the handbook's strict ``<``
    where the tree query is inclusive.

    Args:
        customers: Output of :func:`generate_customers`.
        terminals: Output of :func:`generate_terminals`.
        radius: Largest distance (exclusive) a customer travels to pay.

    Returns:
        The terminal lists of all customers, in customer-id order.
    """
    customer_xy = customers[["x_customer_id", "y_customer_id"]].to_numpy()
    terminal_xy = terminals[["x_terminal_id", "y_terminal_id"]].to_numpy()
    pairs = cKDTree(customer_xy).sparse_distance_matrix(
        cKDTree(terminal_xy), max_distance=radius, output_type="ndarray"
    )
    pairs = pairs[pairs["v"] < radius]
    order = np.lexsort((pairs["j"], pairs["i"]))
    owner = pairs["i"][order].astype(np.int64)
    counts = np.bincount(owner, minlength=len(customer_xy)).astype(np.int64)
    offsets = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    flat = pairs["j"][order].astype(np.int64)
    return TerminalLists(offsets=offsets, counts=counts, terminal_ids=flat)
