"""fedsilo.privacy."""
