"""Alembic scripts of the accounts schema (a package so that installs carry them)."""
