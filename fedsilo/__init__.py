"""fedsilo: cross-silo federated learning with lineage, privacy and secure aggregation."""

__version__ = "0.1.0"
