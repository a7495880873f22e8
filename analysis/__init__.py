"""Metrics, plots, comparisons, export and the report of gentune."""
