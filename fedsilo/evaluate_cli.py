"""``fedsilo evaluate MODEL``: an evaluation-only run in simulation (issue 20, point 7).

No training: every site scores MODEL (``.npz`` of named arrays or a torch ``.pt``
state_dict, checked against the task's model like ``init_model``) on its own held-out
split and signs its score. The run leaves the usual run directory (``config.toml``,
``lineage.sqlite``, ``metrics.json``, ``report.html``, ``model.npz`` = MODEL): its one
round record holds the scorecard (``model_in == model_out``, no contributions, the
sites' signed evaluations), which ``fedsilo lineage verify`` checks like any round's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fedsilo.server.outcome import EXIT_CODES_HELP

EXIT_USAGE = 2
_MODEL_FLAG = "--init-model: "
"""The prefix `fedsilo.server.task_setup.load_init_model` gives its errors; here MODEL's."""
_CONFIG_KEYS = ("task", "sites", "partition", "seed", "hidden", "batch_size", "out", "run_id")


def add_evaluate_parser(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a model at every site, no training (simulation)",
        description="Every simulated site scores MODEL on its own held-out split and signs "
                    "its score; the run directory holds the scorecard. Flags override --config.",
    )
    p.add_argument("model", metavar="MODEL", help="the model: .npz of named arrays or a torch "
                   ".pt state_dict, with the layers of the task's model")
    p.add_argument("--config", metavar="FILE.toml", help="TOML file with run options")
    p.add_argument("--task", help="digits | breast_cancer | wine | mnist1d | tabular | "
                                  "module:object (default digits)")
    p.add_argument("--sites", type=int, help="number of sites (default 10)")
    p.add_argument("--partition", help="iid | dirichlet:ALPHA | shards:K | column:NAME")
    p.add_argument("--seed", type=int, help="seed of the data split (default 0)")
    p.add_argument("--hidden", type=int, help="hidden units of the bundled MLP (default 64)")
    p.add_argument("--batch-size", type=int, help="evaluation batch size (default 32)")
    p.add_argument("--out", help="parent directory of run directories (default runs)")
    p.add_argument("--run-id", help="run id / directory name (default: generated)")
    p.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    p.add_argument("--engine", choices=["ray", "inprocess"], default="ray",
                   help="ray: Flower's simulation engine (default); inprocess: no Ray")
    p.epilog = EXIT_CODES_HELP
    p.set_defaults(handler=evaluate)


def evaluate(args: argparse.Namespace) -> int:
    """Check MODEL and the config (nothing written on failure), run, print one line."""
    from fedsilo.server.config import ConfigError
    from fedsilo.simulations.config import SimulationConfig
    from fedsilo.simulations.runner import check_feasible, run_federation

    overrides: dict[str, Any] = {k: getattr(args, k) for k in _CONFIG_KEYS
                                 if getattr(args, k) is not None}
    # one scoring round: the config.toml of the run says so, whatever --config trains for
    overrides.update(init_model=args.model, rounds=1, eval_every=1, min_rounds_changed=1)
    try:
        config = SimulationConfig.load(args.config, overrides)
        check_feasible(config)  # the task builds and MODEL fits its model
        config = SimulationConfig.from_dict({**config.to_dict(),
                                             "init_model": str(Path(args.model).resolve())})
        run = run_federation(config, verbose=args.verbose, engine=args.engine,
                             evaluate_only=True)
    except ConfigError as exc:
        message = str(exc)
        if message.startswith(_MODEL_FLAG):
            message = "MODEL: " + message.removeprefix(_MODEL_FLAG)
        print(f"fedsilo evaluate: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    return summary(run)


def summary(run: Any) -> int:
    """``fedsilo evaluate: run ID completed (evaluation only: 5 of 5 sites scored the
    model), sites acc mean ... worst ... (site), model DIGEST -> RUN_DIR``."""
    from fedsilo.progress import site_scores
    from fedsilo.server.outcome import exit_code

    result = run.result
    card = run.rounds[-1] if run.rounds else None
    scores = (site_scores(card) if card is not None else None) or "no site scored the model"
    print(f"fedsilo evaluate: run {run.run_id} {result.closing_reason} ({result.detail}), "
          f"{scores}, model {run.final_digest} -> {run.run_dir}")
    return exit_code(result.closing_reason)
