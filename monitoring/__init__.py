"""Monitoring: drift, prediction and outcome metrics of the live model, and what triggers retraining."""
