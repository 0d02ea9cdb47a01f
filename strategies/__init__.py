"""fedsilo.strategies."""
