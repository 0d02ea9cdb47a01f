"""fedsilo's ServerApp as a Flower App, for ``flwr run`` and SuperLink deployments.

``[tool.flwr.app.components]`` of a Flower App points here::

    serverapp = "fedsilo.server.flower_app:server_app"
    clientapp = "fedsilo.client.flower_app:client_app"

The ClientApp lives on the site's side (`fedsilo.client.flower_app`), so the ServerApp's
process never imports the site's code. (``fedsilo.simulations.flower_app`` re-exports
both, for apps written before the move; a fedsilo site runs its own ClientApp whichever
of these names a bundle carries.)

The run config (``[tool.flwr.app.config]`` or ``flwr run --run-config``) takes the
options of `RunConfig` by name (``rounds``, ``task``, ``sites``...; hyphens or
underscores; nested tables such as ``dp.enabled`` or ``task_options.hidden`` as dotted
keys; ``task_options`` may also be one JSON string, as ``fedsilo server run`` sends it,
since Flower's run config holds no lists). Two deployment-only keys are taken out
before `RunConfig` sees them:
``server-key``, the path of the server's Ed25519 lineage signing key (empty: a fresh key
per run, in the run directory), and an empty ``run-id`` means "use Flower's run id".
The server's initial model is the task's (or ``init_model``'s); simulation-only options
(attacks, simulated sites' privacy ceilings) are refused by name. Results go to
``<out>/<run-id>/`` (`fedsilo.server.outputs`): the lineage chain, checkpoint and
``rounds.jsonl`` while running, then ``model.npz`` (before the closing record),
``metrics.json`` and ``report.html``. The federation record sent to the sites carries
``sites``, ``partition``, ``seed`` and ``batch_size`` for demo ``partition-id`` nodes
(`fedsilo.client.flower_app`).

Heavy modules (torch, the datasets) are imported only when the server spec is built,
since the deployment runtime starts a fresh process per message.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

if TYPE_CHECKING:
    from fedsilo.server.config import RunConfig
    from fedsilo.server.loop import FederationServer, ServerSpec
    from fedsilo.server.spec import RunResult

__all__ = ["deployment_spec", "run_config_dict", "server_app", "spec_from_context"]


def spec_from_context(context: Context) -> ServerSpec:
    """Resolve the run config from Flower's run config and build the server spec."""
    import tomli_w

    from fedsilo.server.config import ConfigError, RunConfig
    from fedsilo.server.task_setup import check_deployable

    raw = run_config_dict(context.run_config)
    server_key = str(raw.pop("server_key", "") or "")
    resume = bool(raw.pop("resume", False))
    evaluate_only = bool(raw.pop("evaluate_only", False))  # fedsilo server run --evaluate
    if not raw.get("run_id"):
        raw["run_id"] = f"flwr-{context.run_id}"
    config = RunConfig.from_dict(raw)
    run_dir = Path(config.out) / str(config.run_id)
    if resume:
        # Continue a crashed run: its own config.toml, checkpoint and chain decide.
        if not (run_dir / "config.toml").is_file():
            raise ConfigError(f"resume: {run_dir} has no config.toml; not a fedsilo run directory")
        config = RunConfig.load(run_dir / "config.toml")
    else:
        check_deployable(config)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.toml").write_text(tomli_w.dumps(config.to_dict()))
    spec = deployment_spec(config, run_dir)
    spec.resume = resume
    spec.evaluate_only = evaluate_only
    if server_key:
        spec.server_key_path = Path(server_key)
    return spec


def deployment_spec(config: RunConfig, run_dir: Path) -> ServerSpec:
    """The deployed server's spec: the task's model, identity and (optional) central
    evaluator; the federation record tells ``partition-id`` nodes their share."""
    from fedsilo.server.loop import ServerSpec
    from fedsilo.server.task_setup import demo_partition, server_task, task_options

    st = server_task(config)
    federation = {
        "task": config.task, "task_options": json.dumps(task_options(config), sort_keys=True),
        "sites": config.sites, "partition": demo_partition(config), "seed": config.seed,
        "batch_size": config.batch_size, "sim_run_dir": str(run_dir.resolve()),
    }
    return ServerSpec(
        config=config, run_id=str(config.run_id), initial_weights=st.initial_weights,
        run_dir=run_dir, federation=federation, evaluate_fn=st.evaluate_fn,
        task_identity=st.identity, frozen_layers=st.frozen_layers,
        statistics=st.wants_statistics, profile=st.wants_profile, baseline=st.baseline,
        simulation=False,  # deployment: DP noise from a CSPRNG unless configured otherwise
    )


def run_config_dict(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """Flower's flat run config -> a `RunConfig`-shaped dict (``dp.x`` -> ``{"dp": {"x": ...}}``)."""
    out: dict[str, Any] = {}
    for key, value in run_config.items():
        name = str(key).replace("-", "_")
        if "." in name:
            table, sub = name.split(".", 1)
            out.setdefault(table, {})[sub] = value
        else:
            out[name] = value
    if isinstance(out.get("task_options"), str):  # `server.deploy.app_run_config`'s JSON form
        out["task_options"] = json.loads(out["task_options"] or "{}")
    return out


def _serve(grid: Grid, context: Context) -> None:
    """The ServerApp's main: run the federation, then write the run directory's outputs.

    The server writes ``model.npz`` before its closing record; ``metrics.json`` and
    ``report.html`` (whose sites' data chart shows the sites of the handshake and the
    example counts they declared) follow. A resumed run whose chain is already closed
    only finishes those outputs.
    """
    from fedsilo.server.checkpoint import read_checkpoint
    from fedsilo.server.loop import FederationServer
    from fedsilo.server.outputs import (
        closed_run,
        finish_outputs,
        prune_round_log,
        round_logger,
        write_outputs,
    )

    spec = spec_from_context(context)
    run_dir = spec.run_dir
    if run_dir is None:
        FederationServer(spec).run(grid)
        return
    if spec.resume:
        if closed_run(run_dir, spec.config) is not None:
            finish_outputs(run_dir, spec.config, spec)
            return
        prune_round_log(run_dir, read_checkpoint(run_dir).round)
    spec.on_round = round_logger(run_dir, spec.on_round)
    result = _run_until_signal(FederationServer(spec), grid)
    write_outputs(run_dir, spec.config, result)


def _run_until_signal(server: FederationServer, grid: Grid) -> RunResult:
    """Run the federation with fedsilo's SIGINT/SIGTERM handlers in place of Flower's.

    Flower's handler in ``flwr-serverapp`` exits the process: it starts a 5 s force-exit
    timer, pushes the task's output and closes the grid, and only then raises SystemExit
    in the round loop. On a loaded machine that left too little time for the closing
    record, and the chain stayed open. Ours only asks the loop to stop: it closes the chain
    as ``interrupted`` at its next poll; then the signal goes to Flower's own handler again.
    """
    from fedsilo.server.stopping import RunInterrupted, SignalGuard

    if threading.current_thread() is not threading.main_thread():  # a simulation's thread
        return server.run(grid)
    with SignalGuard() as guard:
        try:
            return server.run(grid)
        except RunInterrupted:
            if guard.signum is None:  # a stop requested without a signal
                raise
            signum = guard.signum
    # the chain is closed and Flower's handlers are back: Flower exits its own way
    os.kill(os.getpid(), signum)
    raise RunInterrupted(f"interrupted by {signal.Signals(signum).name}")


server_app = ServerApp()
server_app.main()(_serve)
