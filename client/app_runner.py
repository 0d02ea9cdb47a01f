"""A site's ClientApp process: checks the run's app bundle before anything from it is imported.

``fedsilo site start`` puts a ``flwr-clientapp`` first on its SuperNode's PATH that runs
`main` (Flower's SuperExec starts ``flwr-clientapp`` by name for every message). Like
Flower's own ``flwr-clientapp`` it pulls the message, context, run and bundle (FAB) from
the SuperNode's Runtime API; unlike it, it reads the bundle as bytes, decides with the
site's `fedsilo.client.app_code.CodePolicy` and then either

* runs fedsilo's installed ClientApp (a bundle naming it and carrying no code),
* installs and runs the bundle's own ClientApp as Flower does (only a bundle the site
  accepted by digest or trusted signature), or
* answers with an error reply (``INVALID_FAB``) whose reason the server records, after a
  one-line refusal in the site's log (stderr) and ledger.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from fedsilo.client.app_code import (
    APP_DIGEST_ENV,
    AppCodeError,
    Bundle,
    CodePolicy,
    read_bundle,
    runs_own_clientapp,
)


def site_of(context: Any) -> tuple[str, CodePolicy, Any]:
    """(site id, code policy, ledger or None) of the node; simulated nodes get the default."""
    from fedsilo.client.site_config import SITE_CONFIG_KEY, read_site_config

    path = context.node_config.get(SITE_CONFIG_KEY)
    if not path:
        return f"node {context.node_id}", CodePolicy(), None
    from fedsilo.lineage.ledger import SiteLedger

    cfg = read_site_config(Path(str(path)))
    return cfg.site_id, cfg.code_policy, SiteLedger(cfg.ledger)


def check_bundle(fab: bytes, context: Any) -> tuple[Bundle | None, str | None]:
    """(bundle, None) to run it, or (bundle or None, refusal reason) after logging the refusal."""
    site_id, policy, ledger = site_of(context)
    try:
        bundle = read_bundle(fab)
        ok, why = policy.decide(bundle)
    except AppCodeError as exc:
        bundle, ok, why = None, False, str(exc)
    if ok:
        return bundle, None
    digest = bundle.digest if bundle is not None else "(unreadable)"
    reason = f"site {site_id} refused app bundle {digest}: it {why}" if bundle else (
        f"site {site_id} refused the app bundle: {why}")
    print(f"fedsilo site: {reason}", file=sys.stderr, flush=True)
    if ledger is not None:
        run_id = str(context.run_config.get("run-id", "") or f"flwr-{context.run_id}")
        entry = {"run_id": run_id, "site_id": site_id, "round": 0, "status": "refused",
                 "reason": reason}
        if bundle is not None:
            entry["app_digest"] = bundle.digest
        ledger.append(entry)
    return bundle, reason


def load_app(bundle: Bundle, run: Any, fab: Any) -> Any:
    """The ClientApp to run for an accepted bundle (see the module docstring)."""
    if runs_own_clientapp(bundle):
        from fedsilo.client.flower_app import client_app

        return client_app
    from flwr.cli.install import install_from_fab
    from flwr.clientapp.utils import get_load_client_app_fn

    install_from_fab(fab.content, skip_prompt=True)
    return get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)(
        run.fab_id, run.fab_version, fab.hash_str)


def run_task(client: Any) -> int:
    """Pull one task, decide, run or refuse, push the reply and the task's status; exit code."""
    from flwr.app import Message
    from flwr.app.error import Error
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

    message = context = reply = None
    status, details, code = SubStatus.FAILED, "ClientApp task failed", 1
    try:
        message, context, run, fab = pull_task_input(client)
        bundle, refusal = check_bundle(fab.content, context)
        if refusal is not None or bundle is None:
            reply = Message(Error(code=ErrorCode.INVALID_FAB, reason=refusal or ""), reply_to=message)
            status, details = SubStatus.FAILED, refusal or ""
        else:
            os.environ[APP_DIGEST_ENV] = bundle.digest
            reply = load_app(bundle, run, fab)(message=message, context=context)
            status, details, code = SubStatus.COMPLETED, "", 0
    except Exception as exc:  # any failure still answers the server, as Flower's runner does
        print(f"fedsilo site: ClientApp failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        if message is not None:
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                  reason=f"{type(exc).__name__}: {exc}"), reply_to=message)
    finally:
        if reply is not None and context is not None:
            push_message(client, reply, context)
        push_task_output(client=client, context=context, sub_status=status, details=details)
    return code


def main() -> int:
    """``flwr-clientapp``'s command line (as Flower's SuperExec calls it)."""
    from flwr.common.args import try_obtain_flwr_app_token
    from flwr.supercore.app_utils import start_parent_process_monitor
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import (
        RuntimeTokenHttpInterceptor,
        RuntimeVersionHttpInterceptor,
    )
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supercore.tls import validate_and_resolve_root_certificates
    from flwr.supernode.cli.flwr_clientapp import _parse_args_run_flwr_clientapp

    args = _parse_args_run_flwr_clientapp().parse_args()
    token = try_obtain_flwr_app_token(args)
    if args.parent_pid is not None:
        start_parent_process_monitor(args.parent_pid)
    client = RuntimeHttpClient.from_server_address(
        server_address=args.runtime_api_address, insecure=args.insecure,
        root_certificates=validate_and_resolve_root_certificates(args.root_certificates, args.insecure),
        interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                      RuntimeTokenHttpInterceptor(token)],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    try:
        return run_task(client)
    finally:
        heartbeat.stop()
        client.close()


WRAPPER = """#!{python}
# Written by `fedsilo site start`: the SuperNode's ClientApp runner checks each run's app
# bundle against the site's code policy before anything from it is imported.
import sys
from fedsilo.client.app_runner import main
sys.exit(main())
"""


def write_wrapper(bin_dir: Path) -> Path:
    """Write the ``flwr-clientapp`` that runs `main` into ``bin_dir`` (put it first on PATH)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / "flwr-clientapp"
    path.write_text(WRAPPER.format(python=sys.executable))
    path.chmod(0o755)
    return path
