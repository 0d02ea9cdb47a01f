"""Site side of a deployment: ``fedsilo site start --config site.toml``.

Everything is checked before any process starts -- the file, the Trainer entry point
(imported and called once: it must return a `fedsilo.client.Trainer`), the site's
signing key and ledger, the CA certificate, the SuperNode authentication key and the
local Runtime API port -- then one ``flower-supernode`` is started with the site's
authentication key, the CA certificate and ``site-config='<abs path of site.toml>'`` in
its node config, so the ClientApp processes it spawns load this site (see
`fedsilo.client.site_config.load_site`). Its PATH starts with a directory holding fedsilo's
``flwr-clientapp`` (`fedsilo.client.app_runner`), so every message's ClientApp process
checks the run's app bundle against the site's code policy before anything from the bundle
is imported.
"""

from __future__ import annotations

import os
from pathlib import Path

from fedsilo.client.app_runner import write_wrapper
from fedsilo.client.site_config import SITE_CONFIG_KEY, SiteConfig, build_site, read_site_config
from fedsilo.common.keyfiles import CertsError, load_auth_private_key, load_certificate
from fedsilo.common.procs import (
    DeployError,
    ManagedProcess,
    Supervisor,
    check_port,
    child_env,
    flower_bin,
)


def check_site(cfg: SiteConfig) -> None:
    """Preflight: trainer, key, ledger, certificates, port. Raises `SiteConfigError`/`DeployError`."""
    build_site(cfg)
    sn = cfg.supernode
    try:
        if sn.ca_cert is not None and not sn.insecure:
            load_certificate(sn.ca_cert, "CA certificate")
        if sn.auth_key is not None and not sn.insecure:
            load_auth_private_key(sn.auth_key)
    except CertsError as exc:
        raise DeployError(f"{cfg.path}: {exc}") from None
    check_port("supernode.runtime_port", "127.0.0.1", sn.runtime_port)


def supernode_argv(cfg: SiteConfig) -> list[str]:
    """The ``flower-supernode`` command line for a site."""
    sn = cfg.supernode
    argv = [str(flower_bin("flower-supernode")), "--superlink", sn.superlink,
            "--host", "127.0.0.1", "--port", str(sn.runtime_port),
            "--node-config", f'{SITE_CONFIG_KEY}="{cfg.path}"']
    if sn.insecure:
        argv.append("--insecure")
    else:
        argv += ["--root-certificates", str(sn.ca_cert), "--auth-supernode-private-key", str(sn.auth_key)]
    if sn.max_wait_time is not None:
        argv += ["--max-wait-time", str(sn.max_wait_time)]
    return argv


def start_site(cfg: SiteConfig, sup: Supervisor, check: bool = True) -> ManagedProcess:
    """Check the site (unless ``check`` is False) and start its SuperNode under ``sup``.

    Parameters
    ----------
    cfg : the validated site config.
    sup : supervisor that owns (and finally stops) the SuperNode process.
    check : run `check_site` first (tests turn it off to start deliberately broken nodes).
    """
    if check:
        check_site(cfg)
    cfg.supernode.log_dir.mkdir(parents=True, exist_ok=True)
    env = child_env()
    # Flower's SuperExec starts `flwr-clientapp` by name: ours, first on PATH, checks the
    # app bundle before anything from it is imported (see fedsilo.client.app_runner)
    bin_dir = write_wrapper(runner_dir(cfg)).parent
    env["PATH"] = os.pathsep.join([str(bin_dir), env["PATH"]])
    return sup.start(f"supernode-{cfg.site_id}", supernode_argv(cfg), env, cwd=cfg.path.parent)


def runner_dir(cfg: SiteConfig) -> Path:
    """Where the site's ``flwr-clientapp`` wrapper is written (one per site.toml)."""
    return cfg.path.parent / ".fedsilo" / f"bin-{cfg.site_id}"


def start_from_file(path: Path, sup: Supervisor) -> ManagedProcess:
    """`read_site_config` then `start_site`."""
    return start_site(read_site_config(path), sup)
