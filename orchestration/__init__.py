"""The Dagster code location: definitions, jobs, sensors, resources and its commands."""

CODE_LOCATION = "fraudpipe"
"""The code location's name, as workspace.yaml (`dagster dev`), pyproject's [tool.dg.project]
(`dg dev`) and the Helm values' user deployment declare it: where the UI files its runs and ticks."""
