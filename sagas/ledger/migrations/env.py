"""Alembic environment: migrations run on the connection the ledger hands over (never a new engine)."""

from __future__ import annotations

from alembic import context

from sagas.ledger.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, transaction_per_migration=True)
with context.begin_transaction():
    context.run_migrations()
