"""Optuna sweeps: study creation, the objective, MLflow parent/child runs, launchers."""
