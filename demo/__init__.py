"""The demo and scenario harness: make demo, the live loop, the scorer clients (above the code location)."""
