"""One training loop per family, runnable with or without Ray; datasets and checkpoints."""
