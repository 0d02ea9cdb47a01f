"""``fedsilo certs``, ``fedsilo server`` and ``fedsilo site``: deployment on Flower's runtime.

``add_deploy_parsers(subparsers)`` adds the three commands to fedsilo's CLI; each sets
``args.handler(args) -> int``. Errors are one line on stderr with a non-zero exit code
(2: bad input; 1: a process failed), and no process is left running. ``server run
--wait`` exits with the run's own status (`fedsilo.server.outcome.exit_code`: 0 completed, 3
no_progress, 1 error...), read from the run's lineage closing record.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

EXIT_USAGE = 2
EXIT_FAILED = 1


if TYPE_CHECKING:
    from fedsilo.server.config import RunConfig


def add_deploy_parsers(sub: Any) -> None:
    """Add ``certs``, ``server`` and ``site`` to an argparse subparsers object."""
    _add_certs(sub)
    _add_server(sub)
    _add_site(sub)


# ------------------------------------------------------------------ certs
def _add_certs(sub: Any) -> None:
    p = sub.add_parser("certs", help="create the CA, server certificate and site keys")
    csub = p.add_subparsers(dest="certs_command", metavar="ACTION", parser_class=type(p))
    init = csub.add_parser("init", help="create (or complete) a certificate directory")
    init.add_argument("dir", metavar="DIR", help="directory for the certificates and keys")
    init.add_argument("--san", action="append", default=[], metavar="ADDR",
                      help="IP address or DNS name of the SuperLink (repeat; at least one)")
    init.add_argument("--sites", default="", metavar="A,B,C",
                      help="site ids that get a SuperNode authentication key pair")
    init.set_defaults(handler=_certs_init)
    p.set_defaults(handler=lambda _a: _usage(p))


def _certs_init(args: argparse.Namespace) -> int:
    from fedsilo.lineage.keys import key_fingerprint, load_or_create_key, public_key_hex
    from fedsilo.server.certs import CertsError, init_certs, parse_sites

    try:
        sites = parse_sites(args.sites) if args.sites else []
        layout = init_certs(Path(args.dir), list(args.san), sites)
    except CertsError as exc:
        return _fail("certs init", str(exc))
    fp = key_fingerprint(public_key_hex(load_or_create_key(layout.lineage_key)))
    print(f"fedsilo certs: CA {layout.ca_cert}, server certificate {layout.server_cert} "
          f"(SANs {', '.join(args.san)}), {len(sites)} site key pairs under {layout.root / 'sites'}")
    print(f"fedsilo certs: server lineage key {layout.lineage_key}, fingerprint {fp} "
          "(sites pin it in [policy] server_key_fingerprints)")
    return 0


# ------------------------------------------------------------------ server
def _add_server(sub: Any) -> None:
    p = sub.add_parser("server", help="operate the SuperLink: start, run, status")
    ssub = p.add_subparsers(dest="server_command", metavar="ACTION", parser_class=type(p))
    start = ssub.add_parser("start", help="start the SuperLink (TLS, site authentication); Ctrl-C stops")
    start.add_argument("--config", default="server.toml", metavar="server.toml")
    start.add_argument("--proxy", choices=["nginx"],
                       help="put nginx in front: TLS for the sites, only the Fleet API forwarded "
                            "to the SuperLink on loopback ([proxy] in server.toml)")
    start.set_defaults(handler=_server_start)
    from fedsilo.server.outcome import EXIT_CODES_HELP

    run = ssub.add_parser("run", help="submit a federation run to the SuperLink",
                          epilog="with --wait, the run's own status (its lineage closing "
                                 f"record) decides the exit code; {EXIT_CODES_HELP}")
    run.add_argument("--resume", metavar="RUN_DIR",
                     help="continue the crashed run in RUN_DIR from its last checkpoint")
    run.add_argument("--config", metavar="run.toml",
                     help="run options (as for fedsilo simulate --config)")
    run.add_argument("--evaluate", metavar="MODEL",
                     help="no training: every site scores MODEL (.npz or torch .pt "
                          "state_dict) on its own held-out split (see fedsilo evaluate)")
    run.add_argument("--server", default="server.toml", metavar="server.toml")
    run.add_argument("--run-id", help="run id / run directory name (default: generated)")
    run.add_argument("--wait", action="store_true",
                     help="wait until the run finishes; exit with its status (see below)")
    run.add_argument("--timeout", type=float, default=3600.0, help="seconds --wait waits")
    run.set_defaults(handler=_server_run)
    st = ssub.add_parser("status", help="connected sites, runs and the current round")
    st.add_argument("--server", "--config", dest="server", default="server.toml", metavar="server.toml")
    st.add_argument("--run-dir", help="run directory to report on (default: the last submitted)")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(handler=_server_status)
    p.set_defaults(handler=lambda _a: _usage(p))


def _server_start(args: argparse.Namespace) -> int:
    from fedsilo.server.deploy import check_server_files, read_server_settings, start_superlink
    from fedsilo.server.deploy_procs import DeployError, Supervisor, clean_leftovers
    from fedsilo.server.proxy import check_proxy, start_proxy

    try:
        settings = read_server_settings(Path(args.config))
        clean_leftovers(settings.log_dir)  # a killed start's SuperLink would hold the port
        check_server_files(settings)
        conf = check_proxy(settings, Path(args.config)) if args.proxy else None
    except DeployError as exc:
        return _fail("server start", str(exc))
    try:
        with Supervisor(settings.log_dir) as sup:
            proc = start_superlink(settings, sup, check=False)
            mode = "insecure (no TLS, no site authentication)" if settings.insecure else (
                f"TLS, {len(settings.sites)} registered sites")
            print(f"fedsilo server: SuperLink pid {proc.pid} on {settings.host}:{settings.port}, "
                  f"{mode}; log {proc.log_path}; Ctrl-C stops", flush=True)
            if conf is not None and settings.proxy is not None:
                nginx = start_proxy(settings, sup, conf)
                print(f"fedsilo server: nginx pid {nginx.pid} on {settings.proxy.host}:"
                      f"{settings.proxy.port} (TLS) forwards only the Fleet API to "
                      f"{settings.address}; config {conf}", flush=True)
            ended = sup.wait()
            return _fail("server start", f"{ended.name} exited with code "
                         f"{ended.popen.returncode}: {ended.log_tail()}", EXIT_FAILED)
    except DeployError as exc:
        return _fail("server start", str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        print("fedsilo server: stopped", file=sys.stderr)
        return 0


def _server_run(args: argparse.Namespace) -> int:
    from fedsilo.server.config import ConfigError, RunConfig
    from fedsilo.server.deploy import read_server_settings, submit_run, wait_run
    from fedsilo.server.deploy_procs import DeployError

    try:
        settings = read_server_settings(Path(args.server))
        if args.resume and args.evaluate:
            raise ConfigError("--evaluate: an evaluation-only run cannot --resume (start it again)")
        if args.resume:
            config = _resumable(Path(args.resume))
        elif not args.config:
            raise ConfigError("--config: required (a run.toml), unless --resume RUN_DIR is given")
        else:
            config = RunConfig.load(args.config, {"run_id": args.run_id, **_evaluate(args)})
            from fedsilo.server.task_setup import check_deployable
            from fedsilo.simulations.runner import check_feasible, new_run_id

            check_deployable(config)  # simulation-only options, the task and init_model
            check_feasible(config)
            # the ServerApp runs in the SuperLink's process tree: absolute paths only
            init_model = str(Path(config.init_model).resolve()) if config.init_model else None
            config = RunConfig.from_dict({**config.to_dict(), "run_id": config.run_id or new_run_id(),
                                          "out": str(Path(config.out).resolve()),
                                          **({"init_model": init_model} if init_model else {}),
                                          **_absolute_task_options(config)})
    except (DeployError, ConfigError) as exc:
        message = str(exc)
        if args.evaluate and message.startswith("--init-model: "):  # MODEL's, not the config's
            message = "--evaluate: " + message.removeprefix("--init-model: ")
        return _fail("server run", message)
    try:
        run = submit_run(settings, config, resume=bool(args.resume),
                         evaluate_only=bool(args.evaluate))
        print(f"fedsilo server: submitted run {run.run_id} (Flower run {run.flwr_run_id}) -> {run.run_dir}",
              flush=True)
        if args.wait:
            from fedsilo.server.deploy import run_outcome
            from fedsilo.server.outcome import exit_code

            flwr_status = wait_run(settings, run.flwr_run_id, args.timeout, run.run_dir)
            status, detail = run_outcome(run.run_dir, flwr_status)
            print(f"fedsilo server: run {run.run_id} {status}: {detail} (Flower: {flwr_status})")
            return exit_code(status)
    except DeployError as exc:
        return _fail("server run", str(exc), EXIT_FAILED)
    return 0


def _absolute_task_options(config: RunConfig) -> dict[str, Any]:
    """``{"task_options": ...}`` with the torch task's module file made absolute (the
    ServerApp runs elsewhere), or nothing for any other task."""
    if config.task != "torch":
        return {}
    from fedsilo.tasks.torch_module import module_path_absolute

    return {"task_options": module_path_absolute(config.task_options, Path.cwd())}


def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """``--evaluate MODEL``: the run's overrides (MODEL as its model; one scoring round)."""
    if not args.evaluate:
        return {}
    return {"init_model": args.evaluate, "rounds": 1, "eval_every": 1, "min_rounds_changed": 1}


def _resumable(run_dir: Path) -> RunConfig:
    """The config of the crashed run in ``run_dir``; `ConfigError` if it cannot be resumed."""
    from fedsilo.server.checkpoint import resumable_config
    from fedsilo.server.config import RunConfig

    run_dir = run_dir.resolve()
    config = resumable_config(run_dir)
    return RunConfig.from_dict({**config.to_dict(), "run_id": run_dir.name, "out": str(run_dir.parent)})


def _server_status(args: argparse.Namespace) -> int:
    import json

    from fedsilo.server.deploy import read_server_settings, status
    from fedsilo.server.deploy_procs import DeployError
    from fedsilo.server.proxy import exposure_warning

    try:
        settings = read_server_settings(Path(args.server))
    except DeployError as exc:
        return _fail("server status", str(exc))
    warning = exposure_warning(settings)
    if warning:  # before asking the SuperLink: shown even when it does not answer
        print(f"fedsilo server status: {warning}", file=sys.stderr, flush=True)
    try:
        st = status(settings, Path(args.run_dir) if args.run_dir else None)
    except DeployError as exc:
        return _fail("server status", str(exc), EXIT_FAILED)
    if args.json:
        print(json.dumps({"nodes": st.nodes, "runs": st.runs, "online": st.online,
                          "warnings": [warning] if warning else [],
                          "run_dir": str(st.run_dir) if st.run_dir else None,
                          "current_round": st.current_round, "lineage_rounds": st.lineage_rounds},
                         indent=2))
        return 0
    print(f"SuperLink {settings.address}: {st.online} SuperNodes online, {len(st.nodes)} known")
    for n in st.nodes:
        print(f"  site {n.get('site') or '?'}  node {n.get('node-id')}  {n.get('status')}")
    for r in st.runs[-5:]:
        print(f"  run {r.get('run-id')}  {r.get('status')}  elapsed {r.get('elapsed')}")
    if st.run_dir is not None:
        print(f"last run {st.run_dir}: checkpointed round {st.current_round}, "
              f"{st.lineage_rounds} round records in lineage")
    return 0


# ------------------------------------------------------------------ site
def _add_site(sub: Any) -> None:
    p = sub.add_parser("site", help="run this site's SuperNode")
    ssub = p.add_subparsers(dest="site_command", metavar="ACTION", parser_class=type(p))
    start = ssub.add_parser("start", help="check site.toml and start the SuperNode; Ctrl-C stops")
    start.add_argument("--config", default="site.toml", metavar="site.toml")
    start.add_argument("--check", action="store_true", help="only run the checks, start nothing")
    start.set_defaults(handler=_site_start)
    p.set_defaults(handler=lambda _a: _usage(p))


def _site_start(args: argparse.Namespace) -> int:
    from fedsilo.client.deploy import check_site, start_site
    from fedsilo.client.site_config import SiteConfigError, read_site_config
    from fedsilo.server.deploy_procs import DeployError, Supervisor, clean_leftovers

    try:
        cfg = read_site_config(Path(args.config))
        if not args.check:  # a killed start's SuperNode would hold the runtime port
            clean_leftovers(cfg.supernode.log_dir)
        check_site(cfg)
    except (SiteConfigError, DeployError) as exc:
        return _fail("site start", str(exc))
    if args.check:
        print(f"fedsilo site: {cfg.site_id}: site.toml, trainer, keys and port OK")
        return 0
    try:
        with Supervisor(cfg.supernode.log_dir) as sup:
            proc = start_site(cfg, sup, check=False)
            time.sleep(1.0)
            if not proc.running():
                return _fail("site start", f"SuperNode exited with code {proc.popen.returncode}: "
                             f"{proc.log_tail()}", EXIT_FAILED)
            print(f"fedsilo site: {cfg.site_id}: SuperNode pid {proc.pid} -> {cfg.supernode.superlink}; "
                  f"log {proc.log_path}; Ctrl-C stops", flush=True)
            ended = sup.wait()
            return _fail("site start", f"SuperNode exited with code {ended.popen.returncode}: "
                         f"{ended.log_tail()}", EXIT_FAILED)
    except DeployError as exc:
        return _fail("site start", str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        print(f"fedsilo site: {cfg.site_id}: stopped", file=sys.stderr)
        return 0


# ------------------------------------------------------------------ helpers
def _fail(command: str, message: str, code: int = EXIT_USAGE) -> int:
    print(f"fedsilo {command}: error: {message}", file=sys.stderr)
    return code


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE
