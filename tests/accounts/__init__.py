"""Tests of the accounts package, each run on SQLite and on PostgreSQL where it touches a database."""
