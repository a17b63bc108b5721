"""Alembic environment: always run with a connection handed in by ``Database.migrate``
(or a fresh engine from ``-x url=...`` when run by hand)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from controller.store.tables import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        url = context.get_x_argument(as_dictionary=True).get("url", "sqlite:///.slipway/slipway.db")
        engine = create_engine(url)
        with engine.begin() as conn:
            context.configure(
                connection=conn, target_metadata=target_metadata, render_as_batch=True
            )
            context.run_migrations()
        engine.dispose()
        return
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    context.run_migrations()


run()
