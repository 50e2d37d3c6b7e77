"""MLflow conventions: experiment per task, lineage tags, dataset inputs, the pyfunc model."""
