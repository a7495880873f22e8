"""The seed report's architectures as pure nn.Modules (no I/O, no ray/mlflow/optuna)."""
