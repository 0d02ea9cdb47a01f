"""fedsilo.lineage."""
