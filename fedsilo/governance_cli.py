"""``fedsilo card``, ``fedsilo export mlflow`` and ``fedsilo monitor``: governance of a run.

``card`` and ``export mlflow`` verify the run's lineage chain first and refuse one that
does not verify; ``monitor`` reads the flags of a run that may still be going (the chain
as it is now, schema-checked, not verified: gate on ``fedsilo lineage verify`` too). Every
error is one line on stderr naming what was wrong, with exit code 2, and nothing is
written half (see `fedsilo.governance.card` and `fedsilo.governance.mlflow_export`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fedsilo.governance.flags import SEVERITIES

EXIT_USAGE = 2
EXIT_FLAGGED = 1


def add_governance_parsers(sub: Any) -> None:
    """Register ``card`` and ``export`` on the ``fedsilo`` command line."""
    p = sub.add_parser("card", help="write a model card from a run's verified lineage",
                       description="Verify RUN_DIR's lineage chain, then write model_card.md "
                                   "and model_card.html from it and the run directory.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a fedsilo run directory")
    p.add_argument("--out", metavar="DIR", help="where to write the card (default: RUN_DIR)")
    p.set_defaults(handler=card)

    export = sub.add_parser("export", help="export a run to an experiment tracker")
    targets = export.add_subparsers(dest="target", metavar="TARGET", required=True,
                                    parser_class=type(export))
    m = targets.add_parser("mlflow", help="log a verified run to MLflow",
                           description="Verify RUN_DIR, then log its config, per-round and "
                                       "per-site metrics, flags, model, report, model card "
                                       "and PROV export to MLflow.")
    m.add_argument("run_dir", metavar="RUN_DIR", help="a fedsilo run directory")
    m.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow tracking URI, e.g. sqlite:///mlflow.db or http://host:5000 "
                        "(default: MLFLOW_TRACKING_URI, else MLflow's default)")
    m.add_argument("--experiment", default="fedsilo", metavar="NAME",
                   help="experiment name, created when missing (default fedsilo)")
    m.add_argument("--register", metavar="NAME",
                   help="also register the model as a new version of NAME")
    m.set_defaults(handler=export_mlflow)

    w = sub.add_parser("monitor", help="list a run's flags; fail a pipeline on them",
                       description="List the flags the run's monitor recorded (the chain as "
                                   "it is now, so a running run works too). Exit 1 when a flag "
                                   "at or above --fail-on exists, 0 otherwise.")
    w.add_argument("run_dir", metavar="RUN_DIR", help="a fedsilo run directory")
    w.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    w.add_argument("--fail-on", choices=SEVERITIES, default="error",
                   help="lowest severity that makes the exit code 1 (default error)")
    w.set_defaults(handler=monitor)


def _fail(command: str, message: str) -> int:
    print(f"fedsilo {command}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def card(args: argparse.Namespace) -> int:
    from fedsilo.governance.card import write_card
    from fedsilo.governance.run_facts import GovernanceError

    try:
        paths = write_card(Path(args.run_dir), Path(args.out) if args.out else None)
    except GovernanceError as exc:
        return _fail("card", str(exc))
    print(f"fedsilo card: wrote {paths[0]} and {paths[1].name}")
    return 0


def export_mlflow(args: argparse.Namespace) -> int:
    from fedsilo.governance.mlflow_export import export_run
    from fedsilo.governance.run_facts import GovernanceError

    try:
        done = export_run(Path(args.run_dir), tracking_uri=args.tracking_uri,
                          experiment=args.experiment, register=args.register)
    except GovernanceError as exc:
        return _fail("export mlflow", str(exc))
    version = f", model {args.register} version {done.model_version}" if args.register else ""
    print(f"fedsilo export mlflow: run {done.mlflow_run_id} in experiment "
          f"{done.experiment_id}{version}")
    return 0


def monitor(args: argparse.Namespace) -> int:
    import json

    from fedsilo.governance.flags import rank
    from fedsilo.lineage import LineageError, load_chain

    try:
        chain = load_chain(Path(args.run_dir))
    except LineageError as exc:
        return _fail("monitor", str(exc))
    rounds = chain.of_type("round")
    flags = [f for env in rounds for f in (env["body"].get("extra") or {}).get("flags", [])]
    state = (chain.closing or {}).get("reason", "running")
    failing = [f for f in flags if rank(str(f["severity"])) >= rank(args.fail_on)]
    if args.json:
        print(json.dumps({"run_id": chain.genesis["run_id"], "state": state,
                          "rounds": len(rounds), "flags": flags}, indent=1, sort_keys=True))
    else:
        print(f"run {chain.genesis['run_id']} ({state}, {len(rounds)} rounds): "
              f"{len(flags)} flags, {len(failing)} at or above {args.fail_on}")
        for f in flags:
            evidence = ", ".join(f"{k}={v}" for k, v in sorted(f["evidence"].items()))
            print(f"  round {f['round']:>4}  {f['severity']:<7}  {f['code']:<24} "
                  f"{f['site'] or '-':<12} {evidence}"
                  + (f"  [{f['action']}]" if f.get("action", "none") != "none" else ""))
    return EXIT_FLAGGED if failing else 0
