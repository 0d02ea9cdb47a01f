"""Shared test helpers (message builders...)."""
