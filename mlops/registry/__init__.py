"""The MLflow model registry: versions with lineage, challenger/champion aliases, promotion."""
