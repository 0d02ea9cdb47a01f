"""Compatibility: the bundled tasks' models moved to `fedsilo.tasks.models`."""

from fedsilo.tasks.models import evaluate_arrays, get_weights, make_mlp, set_weights

__all__ = ["evaluate_arrays", "get_weights", "make_mlp", "set_weights"]
