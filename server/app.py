"""The fedsilo `ServerApp`: the same app runs in simulation and over the network."""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsilo.server.loop import FederationServer, RunResult, ServerSpec


class ServerOutcome:
    """Holds what the ServerApp produced (its result or its exception).

    Flower runs the ServerApp's main function in its own thread (simulation) or
    process (deployment); the caller reads the outcome here afterwards.
    """

    def __init__(self) -> None:
        self.result: RunResult | None = None
        self.error: BaseException | None = None


SIMULATION_PULL_INTERVAL = 0.01


def tune_grid(grid: Grid) -> None:
    """Poll the simulation engine's in-memory link state every 10 ms instead of 100 ms.

    Flower's in-memory Grid sleeps ``pull_interval`` (0.1 s) between polls for replies,
    so every simulated round ends on a 0.1 s tick; small federations spend most of a
    round waiting for it. Polling in-memory state more often costs next to nothing.
    Deployment Grids (no such attribute) are left alone.
    """
    if hasattr(grid, "pull_interval"):
        grid.pull_interval = min(float(grid.pull_interval), SIMULATION_PULL_INTERVAL)


def make_server_app(
    spec_factory: Callable[[Context], ServerSpec], outcome: ServerOutcome | None = None
) -> ServerApp:
    """A ServerApp that runs `FederationServer` with the spec built from its context."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        tune_grid(grid)
        try:
            result = FederationServer(spec_factory(context)).run(grid)
        except BaseException as exc:
            if outcome is not None:
                outcome.error = exc
            raise
        if outcome is not None:
            outcome.result = result

    return app
