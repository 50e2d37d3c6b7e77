"""The train stage (best configuration -> weights + MLflow run), the evaluate stage and the repeats study."""
