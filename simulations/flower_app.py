"""fedsilo's ServerApp and ClientApp as a Flower App, for ``flwr run`` and SuperLink deployments.

``[tool.flwr.app.components]`` of a Flower App points here::

    serverapp = "fedsilo.simulations.flower_app:server_app"
    clientapp = "fedsilo.simulations.flower_app:client_app"

The run config (``[tool.flwr.app.config]`` or ``flwr run --run-config``) takes the
options of `RunConfig` by name (``rounds``, ``dataset``, ``sites``, ``partition``...;
hyphens or underscores). Each SuperNode must carry ``partition-id`` in its node
config (``flower-supernode --node-config "partition-id=0"``), which is how a simulated
site finds its share of the bundled dataset. Results go to ``<out>/<run-id>/``.
"""

from __future__ import annotations

from pathlib import Path

import tomli_w
from flwr.app import Context

from fedsilo.client.app import make_client_app
from fedsilo.server.app import make_server_app
from fedsilo.server.config import RunConfig
from fedsilo.server.loop import ServerSpec
from fedsilo.simulations.sites import simulated_site


def spec_from_context(context: Context) -> ServerSpec:
    """Resolve the run config from Flower's run config and build the server spec."""
    from fedsilo.simulations.runner import build_server_spec, check_feasible

    raw = {str(k).replace("-", "_"): v for k, v in context.run_config.items()}
    raw.setdefault("run_id", f"flwr-{context.run_id}")
    config = RunConfig.from_dict(raw)
    check_feasible(config)
    run_dir = Path(config.out) / str(config.run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(tomli_w.dumps(config.to_dict()))
    return build_server_spec(config, run_dir)


server_app = make_server_app(spec_from_context)
client_app = make_client_app(simulated_site)
