"""Headline statistics of a dataset, to compare with the handbook's."""

from __future__ import annotations

from simulator.data import SimulatedData
from simulator.drift import CARD_TESTING_SCENARIO


def summarize(data: SimulatedData) -> dict[str, int | float | str]:
    """Compute the statistics the handbook publishes for its dataset.

    Args:
        data: The dataset.

    Returns:
        Counts, rates and the time span, keyed by a short name.
    """
    transactions = data.transactions
    n_tx = len(transactions)
    n_days = transactions["TX_TIME_DAYS"].nunique()
    scenario = transactions["TX_FRAUD_SCENARIO"].value_counts()
    n_fraud = int(transactions["TX_FRAUD"].sum())
    summary: dict[str, int | float | str] = {
        "customers": len(data.customers),
        "terminals": len(data.terminals),
        "transactions": n_tx,
        "days with transactions": n_days,
        "transactions per day": n_tx / n_days if n_days else 0.0,
        "first transaction": str(transactions["TX_DATETIME"].min()),
        "last transaction": str(transactions["TX_DATETIME"].max()),
        "frauds": n_fraud,
        "fraud rate": n_fraud / n_tx if n_tx else 0.0,
    }
    for number in (1, 2, 3):
        summary[f"scenario {number} frauds"] = int(scenario.get(number, 0))
    if CARD_TESTING_SCENARIO in scenario.index:
        summary["card-testing frauds"] = int(scenario[CARD_TESTING_SCENARIO])
    summary["fraud reports"] = len(data.fraud_reports)
    return summary


def format_summary(summary: dict[str, int | float | str]) -> str:
    """Lay a summary out one statistic per line, rates as percentages."""
    width = max(map(len, summary))
    lines = []
    for name, value in summary.items():
        if name == "fraud rate" and isinstance(value, float):
            text = f"{value:.3%}"
        elif isinstance(value, float):
            text = f"{value:,.1f}"
        elif isinstance(value, int):
            text = f"{value:,}"
        else:
            text = value
        lines.append(f"{name:<{width}}  {text}")
    return "\n".join(lines)
