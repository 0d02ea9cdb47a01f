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


def make_server_app(
    spec_factory: Callable[[Context], ServerSpec], outcome: ServerOutcome | None = None
) -> ServerApp:
    """A ServerApp that runs `FederationServer` with the spec built from its context."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            result = FederationServer(spec_factory(context)).run(grid)
        except BaseException as exc:
            if outcome is not None:
                outcome.error = exc
            raise
        if outcome is not None:
            outcome.result = result

    return app
