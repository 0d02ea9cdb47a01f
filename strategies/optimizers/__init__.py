"""Built-in server optimisers, one module each."""

from .fedadagrad import FedAdagrad
from .fedadam import FedAdam
from .fedavg import FedAvg
from .fedavgm import FedAvgM
from .fedyogi import FedYogi

BUILTIN = (FedAvg, FedAvgM, FedAdam, FedYogi, FedAdagrad)

__all__ = ["BUILTIN", "FedAdagrad", "FedAdam", "FedAvg", "FedAvgM", "FedYogi"]
