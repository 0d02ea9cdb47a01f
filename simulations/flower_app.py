"""fedsilo's ServerApp and ClientApp as a Flower App, for ``flwr run`` and SuperLink deployments.

``[tool.flwr.app.components]`` of a Flower App points here::

    serverapp = "fedsilo.simulations.flower_app:server_app"
    clientapp = "fedsilo.simulations.flower_app:client_app"

The run config (``[tool.flwr.app.config]`` or ``flwr run --run-config``) takes the
options of `RunConfig` by name (``rounds``, ``dataset``, ``sites``, ``partition``...;
hyphens or underscores; nested tables such as ``dp.enabled`` as dotted keys). Two
deployment-only keys are taken out before `RunConfig` sees them: ``server-key``, the
path of the server's Ed25519 lineage signing key (empty: a fresh key per run, in the
run directory), and an empty ``run-id`` means "use Flower's run id". Results go to
``<out>/<run-id>/``: the lineage chain, checkpoint and ``rounds.jsonl`` while running,
then ``model.npz`` (before the closing record), ``metrics.json`` and ``report.html`` as
after ``fedsilo simulate``.

A SuperNode tells its ClientApp which site it serves through its node config:

* ``site-config='/abs/site.toml'``: a real site; `fedsilo.client.site_config.load_site`
  builds it (Trainer entry point, key, ledger, policy) from that file;
* ``partition-id=N``: a simulated site that derives its share of the bundled dataset
  from the federation settings the server sends.

Heavy modules (torch, the datasets) are imported only when a site or the server spec
is built, since the deployment runtime starts a fresh process per message.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsilo.client.app import Site, make_client_app
from fedsilo.client.site_config import SITE_CONFIG_KEY

if TYPE_CHECKING:
    from fedsilo.server.loop import ServerSpec

def spec_from_context(context: Context) -> ServerSpec:
    """Resolve the run config from Flower's run config and build the server spec."""
    import tomli_w

    from fedsilo.server.config import ConfigError, RunConfig
    from fedsilo.simulations.runner import build_server_spec, check_feasible

    raw = run_config_dict(context.run_config)
    server_key = str(raw.pop("server_key", "") or "")
    resume = bool(raw.pop("resume", False))
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
        check_feasible(config)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.toml").write_text(tomli_w.dumps(config.to_dict()))
    spec = build_server_spec(config, run_dir)
    spec.resume = resume
    spec.simulation = False  # deployment: DP noise from a CSPRNG unless configured otherwise
    if server_key:
        spec.server_key_path = Path(server_key)
    return spec


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
    return out


def node_site(context: Context, federation: Mapping[str, Any]) -> Site:
    """The ClientApp's `SiteFactory`: a configured site (``site-config``) or a simulated one."""
    path = context.node_config.get(SITE_CONFIG_KEY)
    if path:
        from fedsilo.client.site_config import load_site

        return load_site(Path(str(path)))
    from fedsilo.simulations.sites import simulated_site

    return simulated_site(context, federation)


def bundled_trainer(
    dataset: str = "digits",
    partition_id: int = 0,
    sites: int = 3,
    partition: str = "iid",
    seed: int = 0,
    batch_size: int = 32,
) -> Any:
    """A site Trainer on one partition of a bundled dataset (for demos and tests).

    Use it as a ``site.toml`` entry point (``trainer =
    "fedsilo.simulations.flower_app:bundled_trainer"``) with its keyword arguments in
    ``[trainer_options]``.

    Parameters
    ----------
    dataset : digits, breast_cancer, wine (scikit-learn's bundled data) or mnist1d
        (generated offline by the `mnist1d` package).
    partition_id : which share of the training split this site holds, in [0, sites).
    sites : how many shares the training split is cut into.
    partition : iid, dirichlet:ALPHA or shards:K.
    seed : seed of the split and of local shuffling.
    batch_size : local mini-batch size.
    """
    from fedsilo.simulations.sites import simulated_site

    if not 0 <= int(partition_id) < int(sites):
        raise ValueError(f"partition_id: expected an integer in [0, {sites}), got {partition_id}")
    federation = {"dataset": dataset, "sites": int(sites), "partition": partition,
                  "seed": int(seed), "batch_size": int(batch_size)}
    context = SimpleNamespace(node_config={"partition-id": int(partition_id)})
    return simulated_site(context, federation).trainer  # type: ignore[arg-type]


def _serve(grid: Grid, context: Context) -> None:
    """The ServerApp's main: run the federation, then write the run directory's outputs.

    The server writes ``model.npz`` before its closing record; ``metrics.json`` and
    ``report.html`` (whose sites' data chart shows the sites of the handshake and the
    example counts they declared) follow. A resumed run whose chain is already closed
    only finishes those outputs.
    """
    from fedsilo.server.checkpoint import read_checkpoint
    from fedsilo.server.loop import FederationServer
    from fedsilo.simulations.runner import (
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
            finish_outputs(run_dir, spec.config, simulated=False)
            return
        prune_round_log(run_dir, read_checkpoint(run_dir).round)
    spec.on_round = round_logger(run_dir, spec.on_round)
    result = FederationServer(spec).run(grid)
    write_outputs(run_dir, spec.config, result, None)


server_app = ServerApp()
server_app.main()(_serve)
client_app = make_client_app(node_site)
