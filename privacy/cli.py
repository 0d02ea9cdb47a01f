"""``fedsilo privacy calibrate``: print the noise multiplier that meets a budget.

Example::

    fedsilo privacy calibrate --epsilon 3 --delta 1e-5 --rounds 100 --sample-rate 0.1
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any


def _calibrate(args: argparse.Namespace) -> int:
    # imported here: dp-accounting (and scipy) take ~1 s to import, which every other
    # ``fedsilo`` command (e.g. ``lineage verify``) would otherwise pay at start-up
    from .accounting import ClientLevelAccountant
    from .calibrate import calibrate_noise_multiplier

    try:
        z = calibrate_noise_multiplier(
            epsilon=args.epsilon,
            delta=args.delta,
            rounds=args.rounds,
            sample_rate=args.sample_rate,
            sampling=args.sampling,
            method=args.method,
            population=args.population,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    acct = ClientLevelAccountant(
        noise_multiplier=z,
        sample_rate=args.sample_rate,
        delta=args.delta,
        sampling=args.sampling,
        population=args.population,
        method=args.method,
    )
    acct.step(args.rounds)
    if args.json:
        out: dict[str, Any] = {
            "noise_multiplier": z,
            "epsilon": acct.get_epsilon(),
            "delta": args.delta,
            "rounds": args.rounds,
            "sample_rate": args.sample_rate,
            "sampling": args.sampling,
            "accountant": acct.name,
        }
        print(json.dumps(out, sort_keys=True))
    else:
        print(f"noise_multiplier = {z:.6f}")
        print(
            f"epsilon after {args.rounds} rounds = {acct.get_epsilon():.6f} "
            f"(delta={args.delta:g}, {acct.name})"
        )
    return 0


def add_privacy_parser(subparsers: Any) -> None:
    """Register ``privacy calibrate`` on an argparse sub-parsers object.

    Args:
        subparsers: the object returned by ``ArgumentParser.add_subparsers()``; the
            parsed namespace gets ``handler(args) -> int``.
    """
    privacy = subparsers.add_parser("privacy", help="differential privacy tools")
    sub = privacy.add_subparsers(dest="privacy_command", required=True)
    cal = sub.add_parser("calibrate", help="noise multiplier meeting an (epsilon, delta) budget")
    cal.add_argument("--epsilon", type=float, required=True, help="total epsilon budget (> 0)")
    cal.add_argument("--delta", type=float, required=True, help="delta, in (0, 1)")
    cal.add_argument("--rounds", type=int, required=True, help="rounds the budget must last")
    cal.add_argument(
        "--sample-rate",
        type=float,
        required=True,
        help="fraction of sites sampled per round, in (0, 1]",
    )
    cal.add_argument(
        "--sampling",
        choices=["poisson", "fixed"],
        default="poisson",
        help="poisson (independent) or fixed (m of N without replacement)",
    )
    cal.add_argument(
        "--population",
        type=int,
        default=None,
        help="number of sites (required with --sampling fixed)",
    )
    cal.add_argument("--method", choices=["rdp", "pld"], default="rdp", help="accountant")
    cal.add_argument("--json", action="store_true", help="print one JSON object")
    cal.set_defaults(handler=_calibrate)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``privacy ...`` on its own (the fedsilo CLI mounts the same parser).

    Args:
        argv: arguments after the program name, e.g. ``["privacy", "calibrate", ...]``.
    """
    parser = argparse.ArgumentParser(prog="fedsilo")
    add_privacy_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
