"""zdm: zero-downtime schema migrations for PostgreSQL and SQLite (expand, migrate, contract)."""

__version__ = "0.1.0"
