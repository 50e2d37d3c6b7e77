"""The member service's own records: API keys with roles, the request log, and the contribution queue.

They live in the service's database (``Settings.resolved_service_db_uri``: the MLflow backend store's
database unless set), created on first use, so SQLite embedded and PostgreSQL in cluster mode both work.
"""
