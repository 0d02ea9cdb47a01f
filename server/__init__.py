"""fedsilo.server."""
