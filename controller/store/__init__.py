"""Persistence: SQLAlchemy tables, Alembic migrations and small query functions."""
