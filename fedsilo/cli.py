"""The ``fedsilo`` command line: simulate, lineage, strategies, privacy."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from fedsilo.server.outcome import EXIT_CODES_HELP

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _add_simulate(sub: Any) -> None:
    p = sub.add_parser(
        "simulate",
        help="run a whole federation on this machine (Flower simulation engine)",
        description="Run a federation on Flower's simulation engine. Flags override --config.",
    )
    p.add_argument("--config", metavar="FILE.toml", help="TOML file with run options")
    p.add_argument("--task", help="what is learned: digits | breast_cancer | wine | mnist1d | "
                                  "tabular | module:object (default digits)")
    p.add_argument("--dataset", help="the old name of --task")
    p.add_argument("--init-model", metavar="FILE", help="initial model (.npz or torch .pt state_dict)")
    p.add_argument("--sites", type=int, help="number of sites (default 10)")
    p.add_argument("--rounds", type=int, help="number of rounds (default 20)")
    p.add_argument("--partition", help="iid | dirichlet:ALPHA | shards:K | column:NAME (a column "
                   "of task_options.data naming each row's site) (default dirichlet:0.5); for "
                   "a bundled task it sets [task_options] partition")
    p.add_argument("--fraction", type=float, help="fraction of sites sampled per round, (0, 1]")
    p.add_argument("--local-epochs", type=int, help="local epochs per round (default 1)")
    p.add_argument("--lr", type=float, help="local learning rate (default 0.1)")
    p.add_argument("--batch-size", type=int, help="local batch size (default 32)")
    p.add_argument("--hidden", type=int, help="hidden units of the MLP (default 64)")
    p.add_argument("--seed", type=int, help="seed of everything random (default 0)")
    p.add_argument("--aggregator", help="aggregator spec, e.g. trimmed_mean:beta=0.2 (default mean)")
    p.add_argument("--optimizer", help="server optimiser spec, e.g. fedadam:eta=0.01 (default fedavg)")
    p.add_argument("--proximal-mu", type=float, help="FedProx proximal term at the sites (default 0)")
    p.add_argument("--min-sites", type=int, help="replies needed for a round to change the model")
    p.add_argument("--eval-every", type=int,
                   help="each sampled site scores the global model on its own held-out split "
                        "every N rounds and the last (default 1; 0: off)")
    p.add_argument("--min-rounds-changed", type=int,
                   help="rounds that must change the model for the run to end 'completed' "
                        "(default 1; fewer: 'no_progress', exit 3)")
    p.add_argument("--attack", help="simulated attack name (see `fedsilo strategies`)")
    p.add_argument("--malicious", type=int, help="number of malicious sites")
    p.add_argument("--allow-overreach", action="store_true", default=None,
                   help="run even with more attackers than the aggregator tolerates "
                        "(recorded in lineage as outside its guarantee)")
    p.add_argument("--dp-epsilon", type=float, help="client-level DP budget epsilon")
    p.add_argument("--dp-delta", type=float, help="client-level DP delta (default 1e-5)")
    p.add_argument("--dp-noise-multiplier", type=float, help="noise multiplier (default: calibrated)")
    p.add_argument("--dp-clip-norm", type=float, help="clipping norm of site updates (default 1.0)")
    p.add_argument("--dp-clipping", choices=["fixed", "adaptive"], help="clipping mode")
    p.add_argument("--dp-where", choices=["server", "site"], help="where updates are clipped")
    p.add_argument("--dp-accountant", choices=["rdp", "pld"], help="privacy accountant (default rdp)")
    p.add_argument("--dp-sampling", choices=["poisson", "fixed"], help="site sampling the accountant assumes")
    p.add_argument("--dp-profile-noise-multiplier", type=float,
                   help="release the sites' data profiles' noisy sum for the drift check, at this "
                        "noise multiplier (charged to the budget; default: no drift check under DP)")
    p.add_argument("--record-dp-epsilon", type=float, help="record-level DP-SGD at each site: per-site epsilon")
    p.add_argument("--record-dp-noise-multiplier", type=float, help="record-level DP-SGD noise multiplier")
    p.add_argument("--record-dp-max-grad-norm", type=float, help="record-level DP-SGD per-sample clip norm")
    p.add_argument("--record-dp-profile-noise-multiplier", type=float,
                   help="each site adds noise at this multiplier to its data profile for the "
                        "drift check (charged to its DP-SGD budget; default: no drift check)")
    p.add_argument("--site-max-epsilon", type=float, help="simulation: each site's own epsilon ceiling")
    p.add_argument("--secagg", action="store_true", default=None, help="secure aggregation (SecAgg+)")
    p.add_argument("--secagg-degree", type=int, help="SecAgg+ graph degree (default O(log n))")
    p.add_argument("--secagg-threshold", type=int, help="SecAgg+ reconstruction threshold")
    p.add_argument("--no-lineage", dest="lineage", action="store_false", default=None,
                   help="do not write the lineage chain")
    p.add_argument("--out", help="parent directory of run directories (default runs)")
    p.add_argument("--run-id", help="run id / directory name (default: generated)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a crashed run from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="print only the final summary line")
    p.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    p.add_argument("--baseline", metavar="RUN_DIR",
                   help="an earlier run of this task: each site's data profile is checked "
                        "for drift against its profile there ([monitor] baseline)")
    p.add_argument("--mlflow", metavar="URI",
                   help="log the run to MLflow as it goes (tracking URI, e.g. "
                        "sqlite:///mlflow.db; needs fedsilo[mlflow])")
    p.add_argument("--engine", choices=["ray", "inprocess"], default="ray",
                   help="ray: Flower's simulation engine (default); inprocess: the same apps "
                        "in this process, one site after another (no Ray; tests, sweeps)")
    p.epilog = EXIT_CODES_HELP
    p.set_defaults(handler=_simulate)


_FLAG_TO_KEY = {
    "dp_epsilon": "dp.epsilon", "dp_delta": "dp.delta", "dp_noise_multiplier": "dp.noise_multiplier",
    "dp_clip_norm": "dp.clip_norm", "dp_clipping": "dp.clipping", "dp_where": "dp.where",
    "dp_accountant": "dp.accountant", "dp_sampling": "dp.sampling",
    "dp_profile_noise_multiplier": "dp.profile_noise_multiplier",
    "record_dp_epsilon": "record_dp.epsilon", "record_dp_noise_multiplier": "record_dp.noise_multiplier",
    "record_dp_max_grad_norm": "record_dp.max_grad_norm",
    "record_dp_profile_noise_multiplier": "record_dp.profile_noise_multiplier",
    "secagg": "secagg.enabled", "secagg_degree": "secagg.degree", "secagg_threshold": "secagg.threshold",
    "baseline": "monitor.baseline",
}
_NOT_CONFIG = {"config", "quiet", "verbose", "handler", "command", "resume", "engine", "mlflow"}


def _simulate(args: argparse.Namespace) -> int:
    from fedsilo.server.config import ConfigError
    from fedsilo.simulations.config import SimulationConfig

    overrides: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key in _NOT_CONFIG or value is None:
            continue
        overrides[_FLAG_TO_KEY.get(key, key)] = value
    if any(k.startswith("dp.") for k in overrides):
        overrides["dp.enabled"] = True
    if any(k.startswith("record_dp.") for k in overrides):
        overrides["record_dp.enabled"] = True
    if args.resume:
        return _resume(args, overrides)
    try:
        config = SimulationConfig.load(args.config, overrides)
        from fedsilo.simulations.runner import check_feasible

        check_feasible(config)
    except ConfigError as exc:
        return _fail("simulate", str(exc))

    from fedsilo.progress import RoundProgress
    from fedsilo.server.stopping import RunInterrupted, SignalGuard
    from fedsilo.simulations.runner import run_federation

    live = None
    if args.mlflow:  # the store is probed before anything is written
        from fedsilo.governance.mlflow_live import LiveMlflowRun
        from fedsilo.governance.run_facts import GovernanceError

        try:
            live = LiveMlflowRun(args.mlflow)
        except GovernanceError as exc:
            return _fail("simulate", str(exc).replace("--tracking-uri", "--mlflow", 1))
    try:
        with SignalGuard(raise_first=True), \
                RoundProgress(config.rounds, enabled=not args.quiet) as progress:
            on_round = progress.update if live is None else _both(progress.update, live.on_round)
            run = run_federation(config, on_round=on_round, verbose=args.verbose,
                                 engine=args.engine)
    except ConfigError as exc:
        return _fail("simulate", str(exc))
    except RunInterrupted as exc:
        if live is not None:
            live.finish(getattr(exc, "run_dir", None), "interrupted")
        return _interrupted(exc)
    if live is not None:
        status = live.finish(run.run_dir, run.result.closing_reason)
        print(f"fedsilo simulate: MLflow run {live.run_id} ({status}) at {args.mlflow}")
    return _summary(run)


def _both(*callbacks: Any) -> Any:
    """One per-round callback calling each of ``callbacks`` in order."""
    def call(summary: Any) -> None:
        for callback in callbacks:
            callback(summary)
    return call


def _resume(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    from fedsilo.server.config import ConfigError
    from fedsilo.simulations.config import SimulationConfig
    from fedsilo.simulations.runner import resume_federation

    if overrides or args.config:
        return _fail("simulate", "--resume: takes no other run options (the run keeps its config.toml)")
    from pathlib import Path

    from fedsilo.server.stopping import LeftoverOwnerAlive, PidRecord, RunInterrupted, SignalGuard

    try:  # first what a killed run of this directory left running (Ray's processes)
        PidRecord.clean_leftovers(Path(args.resume))
    except LeftoverOwnerAlive as exc:
        return _fail("simulate", f"--resume: {exc}")
    try:
        config = SimulationConfig.load(Path(args.resume) / "config.toml")
        from fedsilo.progress import RoundProgress

        with SignalGuard(raise_first=True), \
                RoundProgress(config.rounds, enabled=not args.quiet) as progress:
            run = resume_federation(Path(args.resume), on_round=progress.update,
                                    verbose=args.verbose, engine=args.engine)
    except ConfigError as exc:
        return _fail("simulate", f"--resume: {exc}" if not str(exc).startswith("--") else str(exc))
    except RunInterrupted as exc:
        return _interrupted(exc)
    return _summary(run)


def _interrupted(exc: Any) -> int:
    """One line for a run stopped by SIGINT/SIGTERM (its chain closed as interrupted)."""
    import os
    import threading
    import time

    from fedsilo.server.outcome import EXIT_INTERRUPTED

    run_dir = getattr(exc, "run_dir", None)
    hint, state = "", "the run's chain is closed as interrupted"
    if run_dir is not None and (run_dir / "checkpoint.npz").exists():
        hint = f"; continue with: fedsilo simulate --resume {run_dir}"
    elif run_dir is not None:
        hint = f"; no round had finished, nothing to resume in {run_dir}"
    if run_dir is not None and (run_dir / "lineage.sqlite").exists():
        from fedsilo import lineage

        try:
            chain = lineage.read_chain(run_dir / "lineage.sqlite")
        except Exception:  # the stop is reported whatever state the chain is in
            chain = []
        # the signal may come after the run closed its chain (outputs not yet written)
        state = (f"the run's chain is closed as {chain[-1]['body']['reason']}"
                 if chain and chain[-1]["type"] == "closing" else "the run's chain is open")
    print(f"fedsilo simulate: {exc}: {state}{hint}", file=sys.stderr, flush=True)
    # a thread a library left waiting (Flower's ClientApp workers) must not keep the process
    # alive past the signal: the chain is closed, nothing else needs to finish
    others = [t for t in threading.enumerate()
              if not t.daemon and t is not threading.current_thread()]
    deadline = time.monotonic() + 1.0
    for thread in others:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in others):
        sys.stdout.flush()
        os._exit(EXIT_INTERRUPTED)
    return EXIT_INTERRUPTED


def _summary(run: Any) -> int:
    """Print the run's summary line (every round of the run, its status, the progress
    made, any resumes); return the exit code of its status (`fedsilo.server.outcome`)."""
    from fedsilo.server.outcome import exit_code

    result = run.result
    acc = run.final_accuracy
    acc_text = f"test accuracy {acc:.4f}" if acc is not None else "no evaluation"
    if run.rounds and run.rounds[-1].site_eval:  # the sites' own scores of the final model
        from fedsilo.progress import site_scores

        acc_text = f"{acc_text}, {site_scores(run.rounds[-1])}" if acc is not None \
            else str(site_scores(run.rounds[-1]))
    resumed = ""
    if run.resumed_from:
        resumed = f", resumed from round {', '.join(str(r) for r in run.resumed_from)}"
    print(
        f"fedsilo: run {run.run_id} {result.closing_reason}: {len(run.rounds)} rounds"
        f" ({result.detail}{resumed}), {acc_text}, model {run.final_digest} -> {run.run_dir}"
    )
    return exit_code(result.closing_reason)


def _fail(command: str, message: str, code: int = EXIT_USAGE) -> int:
    print(f"fedsilo {command}: error: {message}", file=sys.stderr)
    return code


def _add_strategies(sub: Any) -> None:
    """``fedsilo strategies``, with the registry (and its numerical imports) loaded only when
    the command runs: every other command starts faster."""
    parser = sub.add_parser(
        "strategies",
        help="list installed aggregators and server optimisers with their parameters",
        description="List installed aggregators and server optimisers with their parameters.")

    def handler(args: argparse.Namespace) -> int:
        from fedsilo.strategies.registry import _list_handler

        return int(_list_handler(args))

    parser.set_defaults(handler=handler)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fedsilo", description="Cross-silo federated learning on Flower.")
    from fedsilo import __version__

    parser.add_argument("--version", action="version", version=f"fedsilo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_simulate(sub)
    from fedsilo.app_cli import add_app_parser
    from fedsilo.deploy_cli import add_deploy_parsers
    from fedsilo.evaluate_cli import add_evaluate_parser
    from fedsilo.governance_cli import add_governance_parsers
    from fedsilo.lineage.cli import add_lineage_parser
    from fedsilo.privacy.cli import add_privacy_parser

    for register in (add_evaluate_parser, add_lineage_parser, _add_strategies,
                     add_privacy_parser, add_deploy_parsers, add_app_parser,
                     add_governance_parsers):
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    # dp-accounting logs (via absl) every RDP order it skips; the result is still sound
    logging.getLogger("absl").setLevel(logging.ERROR)
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        code = int(handler(args))
    except KeyboardInterrupt:
        print("fedsilo: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        from fedsilo.common.errors import reader_left

        return reader_left()
    if argv is None and args.command == "simulate":  # the process's own command, not a caller's
        from fedsilo.simulations.runner import exit_now

        return exit_now(code)  # the run is on disk: skip the interpreter's seconds of teardown
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
