"""Sweep specs, Ray Tune + Optuna search, and the `gentune` command line."""
