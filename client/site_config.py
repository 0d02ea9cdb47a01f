"""A site's ``site.toml``: identity, Trainer entry point, policy, key, ledger, SuperNode settings.

::

    site_id = "hospital-a"
    trainer = "my_package.training:make_trainer"   # module:function returning a fedsilo Trainer
    key = "keys/lineage.pem"        # the site's Ed25519 signing key (created 0600 if missing)
    ledger = "ledger.jsonl"         # the site's own ledger of what it sent or refused

    [trainer_options]               # keyword arguments of the trainer function
    data_dir = "/data/site-a"

or, instead of ``trainer`` and ``[trainer_options]``, a Task (the same name and options
as the server's run config; the handshake refuses a site whose task differs)::

    task = "tabular"                # a built-in task or "module:object"
    [task_options]                  # the task's options (as in the run config)
    [data]                          # where this site's data are: the task's SiteData.options
    path = "data/site-a.csv"        # (relative paths: relative to this file's directory)

    [policy]                        # fedsilo.client.policy.SitePolicy fields, plus the code
    # policy (fedsilo.client.app_code.CodePolicy; empty lists: only fedsilo's own ClientApp)
    accepted_app_digests = ["sha256:<64 hex>"]   # app bundles this site runs, by content digest
    trusted_app_keys = ["ed25519:0123456789abcdef"]  # ...or signed by one of these keys
    server_key_fingerprints = ["ed25519:0123456789abcdef"]
    allowed_aggregators = ["mean", "trimmed_mean"]
    allowed_optimizers = ["fedavg"]
    max_rounds = 50
    max_epsilon = 8.0
    require_secagg = false
    share_profile = true            # send the data profile (counts) for the drift check

    [supernode]
    superlink = "fl.example.org:9092"   # the SuperLink's Fleet API address
    ca_cert = "certs/ca.pem"            # CA that signed the SuperLink's certificate
    auth_key = "certs/auth_key"         # the site's SuperNode authentication key (OpenSSH EC)
    runtime_port = 9094                 # the SuperNode's local Runtime API port
    log_dir = "logs"
    insecure = false                    # loopback tests only: no TLS, no authentication

Relative paths are relative to the directory holding ``site.toml``. `load_site` is what
the ClientApp calls (the SuperNode passes the file's path in its node config);
`read_site_config` is what ``fedsilo site start`` checks before starting anything.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsilo.client.app import Site
from fedsilo.client.app_code import AppCodeError, CodePolicy
from fedsilo.client.policy import SitePolicy
from fedsilo.client.trainer import Trainer
from fedsilo.common import tomlfile
from fedsilo.common.errors import FedsiloError

SITE_CONFIG_KEY = "site-config"
"""SuperNode node-config key holding the absolute path of the site's ``site.toml``."""


class SiteConfigError(FedsiloError, ValueError):
    """``site.toml`` is missing, malformed or names something that does not work (one line)."""


@dataclass
class SuperNodeSettings:
    """How the site's SuperNode reaches the SuperLink.

    Parameters
    ----------
    superlink : host:port of the SuperLink's Fleet API.
    ca_cert : CA certificate that signed the SuperLink's TLS certificate.
    auth_key : the site's SuperNode authentication private key (OpenSSH EC).
    runtime_port : port of the SuperNode's local Runtime API (127.0.0.1).
    log_dir : where the SuperNode's log goes.
    insecure : plain HTTP and no authentication (loopback tests only).
    max_wait_time : seconds the SuperNode keeps trying to connect (None: forever).
    """

    superlink: str = "127.0.0.1:9092"
    ca_cert: Path | None = None
    auth_key: Path | None = None
    runtime_port: int = 9094
    log_dir: Path = Path("logs")
    insecure: bool = False
    max_wait_time: float | None = None


@dataclass
class SiteConfig:
    """A validated ``site.toml`` (see the module docstring).

    Parameters
    ----------
    path : the file it came from (absolute).
    site_id : the site's stable id.
    trainer : ``module:function`` entry point returning a `fedsilo.client.Trainer`
        ("" when the site names a ``task``).
    trainer_options : keyword arguments passed to that function.
    task : the site's task (a built-in name or ``module:object``; None: ``trainer``).
    task_options : the task's options.
    data : the ``[data]`` table, passed to the task as `SiteData.options`.
    key : the site's Ed25519 lineage signing key.
    ledger : the site's ledger file (JSON Lines).
    policy : the rules the site enforces on every round.
    code_policy : which app bundles the site runs (``[policy]`` accepted_app_digests,
        trusted_app_keys).
    supernode : SuperNode connection settings.
    """

    path: Path
    site_id: str
    trainer: str
    trainer_options: dict[str, Any] = field(default_factory=dict)
    key: Path = Path("key.pem")
    ledger: Path = Path("ledger.jsonl")
    policy: SitePolicy = field(default_factory=SitePolicy)
    supernode: SuperNodeSettings = field(default_factory=SuperNodeSettings)
    code_policy: CodePolicy = field(default_factory=CodePolicy)
    task: str | None = None
    task_options: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)


_CODE_KEYS = ("accepted_app_digests", "trusted_app_keys")
_TOP = {"site_id", "trainer", "trainer_options", "key", "ledger", "policy", "supernode",
        "task", "task_options", "data"}
_SUPERNODE = {"superlink", "ca_cert", "auth_key", "runtime_port", "log_dir", "insecure",
              "max_wait_time"}


def read_site_config(path: Path) -> SiteConfig:
    """Parse and validate ``site.toml`` (no imports, no key loading); `SiteConfigError`."""
    path = Path(path).resolve()
    data = _read(path)
    where = str(path)
    unknown = sorted(set(data) - _TOP)
    if unknown:
        raise SiteConfigError(f"{where}: unknown keys {unknown}; accepted: {sorted(_TOP)}")
    if "site_id" not in data:
        raise SiteConfigError(f"{where}: site_id is missing")
    if ("trainer" in data) == ("task" in data):
        raise SiteConfigError(f"{where}: set either task (a built-in task or 'module:object') "
                              "or trainer ('module:function'), not both" if "task" in data
                              else f"{where}: trainer is missing (or set task)")
    base = path.parent
    site_id = _get(where, data, "site_id", str)
    if not site_id.strip():
        raise SiteConfigError(f"{where}: site_id must not be empty")
    trainer = _get(where, data, "trainer", str, "")
    if "trainer" in data and (trainer.count(":") != 1 or not all(trainer.split(":"))):
        raise SiteConfigError(f"{where}: trainer must be 'module:function', got {trainer!r}")
    task = _get(where, data, "task", str, None)
    if task is not None and not task.strip():
        raise SiteConfigError(f"{where}: task must not be empty")
    rules = dict(_get(where, data, "policy", dict, {}))
    code = {k: rules.pop(k) for k in _CODE_KEYS if k in rules}
    try:
        code_policy = CodePolicy.from_mapping(code, "[policy]")
    except AppCodeError as exc:
        raise SiteConfigError(f"{where}: {exc}") from None
    try:
        policy = SitePolicy.from_mapping(rules)
    except (TypeError, ValueError) as exc:
        raise SiteConfigError(f"{where}: [policy]: {exc}") from None
    sn = _get(where, data, "supernode", dict, {})
    bad = sorted(set(sn) - _SUPERNODE)
    if bad:
        raise SiteConfigError(f"{where}: unknown keys {bad} in [supernode]; accepted: {sorted(_SUPERNODE)}")
    supernode = SuperNodeSettings(
        superlink=_get(where, sn, "superlink", str, "127.0.0.1:9092", "supernode."),
        runtime_port=_get(where, sn, "runtime_port", int, 9094, "supernode."),
        log_dir=base / _get(where, sn, "log_dir", str, "logs", "supernode."),
        insecure=_get(where, sn, "insecure", bool, False, "supernode."),
    )
    for name in ("ca_cert", "auth_key"):
        if name in sn:
            setattr(supernode, name, base / _get(where, sn, name, str, None, "supernode."))
    if "max_wait_time" in sn:
        supernode.max_wait_time = float(_get(where, sn, "max_wait_time", (int, float), None, "supernode."))
    if not supernode.insecure and (supernode.ca_cert is None or supernode.auth_key is None):
        raise SiteConfigError(f"{where}: [supernode] needs ca_cert and auth_key (or insecure = true)")
    return SiteConfig(
        path=path,
        site_id=site_id,
        trainer=trainer,
        trainer_options=_get(where, data, "trainer_options", dict, {}),
        key=base / _get(where, data, "key", str, "key.pem"),
        ledger=base / _get(where, data, "ledger", str, "ledger.jsonl"),
        policy=policy,
        supernode=supernode,
        code_policy=code_policy,
        task=task,
        task_options=_get(where, data, "task_options", dict, {}),
        data=_get(where, data, "data", dict, {}),
    )


def load_trainer(entry_point: str, options: dict[str, Any], where: str = "site.toml") -> Trainer:
    """Import ``module:function``, call it with ``options``, check it returned a Trainer."""
    module_name, func_name = entry_point.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SiteConfigError(f"{where}: trainer {entry_point!r}: cannot import {module_name!r} ({exc})") from None
    func = getattr(module, func_name, None)
    if func is None or not callable(func):
        raise SiteConfigError(f"{where}: trainer {entry_point!r}: {module_name} has no function {func_name!r}")
    try:
        trainer = func(**options)
    except (TypeError, ValueError) as exc:
        raise SiteConfigError(f"{where}: trainer {entry_point!r} failed with [trainer_options]: {exc}") from None
    if not isinstance(trainer, Trainer):
        raise SiteConfigError(
            f"{where}: trainer {entry_point!r} returned {type(trainer).__name__}, expected a "
            "fedsilo.client.Trainer (fit, evaluate, data_fingerprint)"
        )
    return trainer


def build_site(cfg: SiteConfig) -> Site:
    """The `Site` a ``site.toml`` describes: trainer, signing key, ledger, policy."""
    from fedsilo.lineage.errors import LineageError
    from fedsilo.lineage.keys import load_or_create_key
    from fedsilo.lineage.ledger import SiteLedger

    task = None
    if cfg.task is not None:
        from fedsilo.tasks import TaskError, resolve_task

        options = cfg.task_options
        if cfg.task == "torch":  # its module file: relative to site.toml, like [data] paths
            from fedsilo.tasks.torch_module import module_path_absolute

            options = module_path_absolute(options, cfg.path.parent)
        try:
            task = resolve_task(cfg.task, options)
        except TaskError as exc:
            raise SiteConfigError(f"{cfg.path}: {exc}") from None
    else:
        trainer = load_trainer(cfg.trainer, cfg.trainer_options, str(cfg.path))
    try:
        key = load_or_create_key(cfg.key)
    except (LineageError, OSError) as exc:
        raise SiteConfigError(f"{cfg.path}: key {cfg.key}: {exc}") from None
    if not os.access(cfg.ledger.parent if cfg.ledger.parent.exists() else cfg.path.parent, os.W_OK):
        raise SiteConfigError(f"{cfg.path}: ledger {cfg.ledger}: directory is not writable")
    cfg.ledger.parent.mkdir(parents=True, exist_ok=True)
    if task is not None:
        return _task_site(cfg, task, key, SiteLedger(cfg.ledger))
    return Site(site_id=cfg.site_id, trainer=trainer, key=key, ledger=SiteLedger(cfg.ledger),
                policy=cfg.policy)


def _task_site(cfg: SiteConfig, task: Any, key: Any, ledger: Any) -> Site:
    """The site's Trainer built by its task from ``[data]``; a failure is one line."""
    from fedsilo.client.task_site import task_site
    from fedsilo.tasks import SiteData

    seed = cfg.data.get("seed", 0)
    data = SiteData(site_id=cfg.site_id, options=dict(cfg.data), base_dir=cfg.path.parent,
                    seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else 0)
    try:
        return task_site(task, data, key=key, ledger=ledger, policy=cfg.policy)
    except (ValueError, KeyError, OSError) as exc:
        raise SiteConfigError(f"{cfg.path}: task {cfg.task!r} cannot build the site's "
                              f"Trainer from [data]: {exc}") from None


_CACHE: dict[tuple[str, int], Site] = {}


def load_site(path: Path) -> Site:
    """The `Site` of the ``site.toml`` at ``path`` (cached per file version in this process)."""
    resolved = Path(path).resolve()
    try:
        stamp = resolved.stat().st_mtime_ns
    except OSError:
        raise SiteConfigError(f"site config {path}: file not found") from None
    site = _CACHE.get((str(resolved), stamp))
    if site is None:
        site = _CACHE[(str(resolved), stamp)] = build_site(read_site_config(resolved))
    return site


def _read(path: Path) -> dict[str, Any]:
    return tomlfile.read_toml(path, SiteConfigError, "site config")


_MISSING = object()


def _get(where: str, data: dict[str, Any], name: str, kind: Any, default: Any = _MISSING,
         prefix: str = "") -> Any:
    if name not in data:
        return default
    value = data[name]
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else "number"
        raise SiteConfigError(f"{where}: {prefix}{name} must be a {expected}, got {value!r}")
    return value
