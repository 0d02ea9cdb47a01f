"""``fedsilo lineage``: verify, show, contributors, export, reconcile.

Exit codes: 0 success; 1 verification failed / ledger mismatches; 2 bad input (missing,
foreign, truncated or corrupted file, bad arguments), reported as one line on stderr
(``fedsilo lineage: error: ...``), never a traceback. Read commands never write to inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from fedsilo.common.errors import reader_left

from .chain import LoadedChain, load_chain
from .errors import LineageError
from .export import export_jsonl, export_prov_json
from .keys import key_fingerprint
from .query import contributors, reconcile
from .verify import verify_run

PROG = "fedsilo lineage"
Handler = Callable[[argparse.Namespace], int]


class _OneLineParser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line on stderr (exit 2)."""

    def error(self, message: str) -> NoReturn:
        _error(message)
        raise SystemExit(2)


def _error(message: str) -> None:
    sys.stderr.write(f"{PROG}: error: {' '.join(str(message).split())}\n")


def _guard(handler: Handler) -> Handler:
    """Turn bad input into one stderr line and exit code 2, never a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except LineageError as exc:
            _error(str(exc))
            return 2
        except BrokenPipeError:
            return reader_left()
        except Exception as exc:  # the boundary: no traceback for users
            if os.environ.get("FEDSILO_DEBUG"):
                raise
            _error(f"unexpected {type(exc).__name__}: {exc} (set FEDSILO_DEBUG=1 for details)")
            return 2

    return run


def add_lineage_parser(subparsers: Any) -> None:
    """Add the ``lineage`` command (with its subcommands) to a CLI's subparsers.

    Each subcommand sets ``args.handler``: ``Callable[[argparse.Namespace], int]``
    returning the exit code.

    Args:
        subparsers: the object returned by ``ArgumentParser.add_subparsers()``.
    """
    parser = subparsers.add_parser(
        "lineage", help="verify and query a run's lineage chain", description=__doc__
    )
    _add_commands(parser)


def _add_commands(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(
        dest="lineage_command", required=True, metavar="COMMAND", parser_class=_OneLineParser
    )

    p = sub.add_parser("verify", help="recompute every digest, link and signature")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument(
        "--server-key",
        metavar="HEX",
        help="the server public key (64 hex) you trust; any other key fails",
    )
    p.add_argument(
        "--skip-site-signatures",
        action="store_true",
        help="do not check contributions' site signatures (reported in the summary)",
    )
    p.add_argument(
        "--all-signatures",
        action="store_true",
        help="check every server and site signature (default: every digest and link, the "
        "head record's server signature and each site chain's last attestation)",
    )
    p.add_argument("--workers", type=int, default=None, help="signature-checking threads")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_guard(_verify))

    p = sub.add_parser("show", help="table of rounds")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--round", type=int, default=None, metavar="R", help="details of round R")
    p.add_argument("--json", action="store_true", help="print round records as JSON")
    p.set_defaults(handler=_guard(_show))

    p = sub.add_parser("contributors", help="sites and data that fed a model")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--model", default=None, metavar="DIGEST", help="default: the final model")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(handler=_guard(_contributors))

    p = sub.add_parser("export", help="export the chain as JSON Lines or W3C PROV-JSON")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--format", required=True, choices=("jsonl", "prov-json"))
    p.add_argument(
        "-o", "--output", type=Path, default=None, metavar="FILE", help="default: standard output"
    )
    p.set_defaults(handler=_guard(_export))

    p = sub.add_parser("reconcile", help="compare a site's ledger with the chain")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("ledger", type=Path, metavar="SITE_LEDGER")
    p.add_argument("--site", default=None, help="the ledger's site id (default: from the ledger)")
    p.set_defaults(handler=_guard(_reconcile))


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: ``main(["verify", run_dir])`` returns the exit code."""
    parser = _OneLineParser(prog=PROG, description=__doc__)
    _add_commands(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    return int(args.handler(args))


def _verify(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers < 1:
        raise LineageError(f"--workers must be >= 1, got {args.workers}")
    report = verify_run(
        args.run_dir,
        check_site_signatures=not args.skip_site_signatures,
        expected_server_key=args.server_key,
        workers=args.workers,
        all_signatures=args.all_signatures,
    )
    try:
        print(json.dumps(report.__dict__, sort_keys=True) if args.json else report.summary)
    except BrokenPipeError:  # the reader left: the verdict is still the exit code
        reader_left()
    return 0 if report.ok else 1


def _short(digest: str | None) -> str:
    return "-" if digest is None else digest.removeprefix("sha256:")[:12]


def _metrics(metrics: dict[str, Any]) -> str:
    parts = []
    for key in sorted(metrics):
        value = metrics[key]
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts) or "-"


def _show(args: argparse.Namespace) -> int:
    chain = load_chain(args.run_dir)
    rounds = [e for e in chain.envelopes if e["type"] == "round"]
    if args.round is not None:
        rounds = [e for e in rounds if e["body"]["round"] == args.round]
        if not rounds:
            raise LineageError(f"round {args.round} is not in the chain")
    if args.json:
        print(json.dumps([{"seq": e["seq"], **e["body"]} for e in rounds], sort_keys=True))
        return 0
    print(_header(chain))
    print(
        f"{'seq':>5} {'round':>5} {'status':<9} {'smp':>4} {'rep':>4} {'acc':>4} {'rej':>4} "
        f"{'drop':>4}  {'model_in':<12} -> {'model_out':<12}  metrics"
    )
    # a resume record is listed where it sits in the chain: the interruption stays visible
    resumes = [] if args.round is not None else chain.of_type("resume")
    for env in sorted([*rounds, *resumes], key=lambda e: e["seq"]):
        b = env["body"]
        if env["type"] == "resume":
            print(f"{env['seq']:>5} resumed from the checkpoint of round {b['from_round']} "
                  f"at {b['resumed_at']}: {b['reason']}")
            continue
        print(
            f"{env['seq']:>5} {b['round']:>5} {b['status']:<9} {len(b['sampled']):>4} "
            f"{len(b['replied']):>4} {len(b['accepted']):>4} {len(b['rejected']):>4} "
            f"{len(b['dropped']):>4}  {_short(b['model_in']):<12} -> "
            f"{_short(b['model_out']):<12}  {_metrics(b['metrics'])}"
        )
    if args.round is not None:
        for env in rounds:
            _round_detail(env["body"])
    closing = chain.closing
    if closing is not None:
        print(
            f"closed: {closing['reason']} after {closing['rounds_completed']} rounds, "
            f"final model {_short(closing['final_model_digest'])}"
            + (
                f", epsilon {closing['epsilon_spent']:.4g}"
                if closing["epsilon_spent"] is not None
                else ""
            )
            + (f"; {closing['detail']}" if closing["detail"] else "")
        )
    else:
        print("open chain (no closing record)")
    return 0


def _header(chain: LoadedChain) -> str:
    g = chain.genesis
    joined = len(chain.of_type("site_join"))
    return (
        f"run {g['run_id']}  started {g['created_at']}  server key "
        f"{key_fingerprint(g['server_public_key'])}  sites {len(g['sites'])}"
        + (f" (+{joined} joined)" if joined else "")
        + f"  records {len(chain.envelopes)}"
    )


def _round_detail(body: dict[str, Any]) -> None:
    print(
        f"round {body['round']}: strategy {json.dumps(body['strategy'], sort_keys=True)}"
        + (f", reason {body['reason']}" if body["reason"] else "")
    )
    print(f"  {'site':<16} {'fate':<9} {'examples':>8}  {'update':<12}  {'data':<12}")
    for c in body["contributions"]:
        print(
            # under SecAgg+ the count is inside the secure sum (null on the record)
            f"  {c['site_id']:<16} {c['fate']:<9} "
            f"{'secret' if c['num_examples'] is None else c['num_examples']:>8}  "
            f"{_short(c['update_digest']):<12}  {_short(c['data_fingerprint']):<12}"
        )
    for site_id, reason in sorted(body["rejected"].items()):
        print(f"  rejected {site_id}: {reason}")
    if body["dropped"]:
        print(f"  dropped: {', '.join(body['dropped'])}")
    for name in ("privacy", "secagg"):
        if body[name] is not None:
            print(f"  {name}: {json.dumps(body[name], sort_keys=True)}")


def _contributors(args: argparse.Namespace) -> int:
    found = contributors(args.run_dir, args.model)
    if args.json:
        print(json.dumps([c.to_dict() for c in found], sort_keys=True))
        return 0
    if not found:
        print("no contributors (the initial model)")
        return 0
    print(f"{'site':<16} {'data fingerprint':<20} rounds")
    for c in found:
        print(f"{c.site_id:<16} {_short(c.data_fingerprint):<20} {_ranges(c.rounds)}")
    return 0


def _ranges(rounds: list[int]) -> str:
    """``[1, 2, 3, 5]`` -> ``"1-3,5"`` (``rounds`` ascending)."""
    runs: list[list[int]] = []
    for r in rounds:
        if runs and r == runs[-1][1] + 1:
            runs[-1][1] = r
        else:
            runs.append([r, r])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _export(args: argparse.Namespace) -> int:
    if args.format == "jsonl":
        export_jsonl(args.run_dir, args.output)
    else:
        export_prov_json(args.run_dir, args.output)
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    mismatches = reconcile(args.run_dir, args.ledger, args.site)
    for line in mismatches:
        print(line)
    if mismatches:
        print(f"{len(mismatches)} mismatches between {args.ledger} and the chain")
        return 1
    print(f"OK: {args.ledger} matches the chain")
    return 0
