"""Compatibility: `TorchTrainer` moved to `fedsilo.tasks.torch_trainer`."""

from fedsilo.tasks.torch_trainer import TorchTrainer, array_fingerprint

__all__ = ["TorchTrainer", "array_fingerprint"]
