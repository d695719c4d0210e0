"""Partitioning shared by the assets: one partition per UTC day of event time."""

import dagster as dg

HISTORY_START = "2018-04-01"

daily_partitions = dg.DailyPartitionsDefinition(start_date=HISTORY_START, timezone="UTC")
