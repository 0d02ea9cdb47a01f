"""fedsilo.privacy.secagg: SecAgg+ secure aggregation."""
