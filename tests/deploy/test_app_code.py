"""Issue 24 points 1 and 5, fast: bundle digest, signing, the site's code policy, bad input.

The bundles are built by Flower's own builder from real app directories (as ``flwr run``
builds them); the runner's decision is checked with a real Flower ``Context``.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict
from flwr.cli.build import build_fab_from_disk

from fedsilo.cli import main
from fedsilo.client.app_code import (
    OWN_CLIENTAPP,
    SIGNATURE_FILE,
    AppCodeError,
    CodePolicy,
    read_bundle,
    sign_app_dir,
    signer,
)
from fedsilo.client.app_runner import check_bundle, write_wrapper
from fedsilo.client.site_config import SITE_CONFIG_KEY, read_site_config
from fedsilo.lineage import key_fingerprint, load_or_create_key, public_key_hex

from .conftest import write_site_toml

REPO = Path(__file__).resolve().parents[2]
D = "sha256:" + "0" * 64


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """fedsilo's example Flower app: names fedsilo's own ClientApp, carries no code."""
    return Path(shutil.copytree(REPO / "examples" / "flower-app", tmp_path / "app"))


def _key(tmp_path: Path, name: str):  # noqa: ANN202 - an Ed25519PrivateKey
    return load_or_create_key(tmp_path / f"{name}.pem")


def _bundle(app: Path):  # noqa: ANN202 - a Bundle
    return read_bundle(build_fab_from_disk(app))


def test_digest_covers_content_not_signature(app: Path, tmp_path: Path) -> None:
    before = _bundle(app)
    assert before.clientapp == OWN_CLIENTAPP and before.code_files == [] and before.signature is None
    doc = sign_app_dir(app, _key(tmp_path, "k"))
    after = _bundle(app)
    assert after.digest == before.digest == doc["digest"]
    assert after.signature == doc
    (app / "README.md").write_text("changed\n")
    assert _bundle(app).digest != before.digest


def test_signature_verifies_only_for_the_signed_content(app: Path, tmp_path: Path) -> None:
    key = _key(tmp_path, "k")
    sign_app_dir(app, key)
    assert signer(_bundle(app)) == public_key_hex(key)
    (app / "README.md").write_text("changed after signing\n")
    assert signer(_bundle(app)) is None
    sig = json.loads((app / SIGNATURE_FILE).read_text())
    sign_app_dir(app, key)
    forged = json.loads((app / SIGNATURE_FILE).read_text())
    forged["signature"] = sig["signature"]  # right digest, a signature over another one
    (app / SIGNATURE_FILE).write_text(json.dumps(forged))
    assert signer(_bundle(app)) is None


def test_default_policy_runs_only_fedsilos_clientapp(app: Path) -> None:
    policy = CodePolicy()
    assert policy.decide(_bundle(app)) == (True, "fedsilo's own ClientApp")
    (app / "helper.py").write_text("print('hi')\n")
    assert policy.decide(_bundle(app)) == (
        False, "carries Python code of its own (helper.py); this site runs only fedsilo's own ClientApp")
    (app / "helper.py").unlink()
    text = (app / "pyproject.toml").read_text().replace(OWN_CLIENTAPP, "mine.client:app")
    (app / "pyproject.toml").write_text(text)
    assert policy.decide(_bundle(app)) == (
        False, f"names ClientApp 'mine.client:app'; this site runs only fedsilo's own ({OWN_CLIENTAPP})")


def test_listed_digests_and_trusted_keys(app: Path, tmp_path: Path) -> None:
    trusted, other = _key(tmp_path, "t"), _key(tmp_path, "o")
    fp = key_fingerprint(public_key_hex(trusted))
    unsigned = _bundle(app)
    assert CodePolicy(accepted_app_digests=[unsigned.digest]).decide(unsigned) == (
        True, "digest listed in accepted_app_digests")
    policy = CodePolicy(trusted_app_keys=[fp])
    assert policy.decide(unsigned) == (
        False, "is unsigned and its digest is not in accepted_app_digests")
    sign_app_dir(app, trusted)
    assert policy.decide(_bundle(app)) == (True, f"signed by trusted key {fp}")
    assert CodePolicy(trusted_app_keys=[public_key_hex(trusted)]).decide(_bundle(app))[0]
    sign_app_dir(app, other)
    other_fp = key_fingerprint(public_key_hex(other))
    assert policy.decide(_bundle(app)) == (
        False, f"is signed by {other_fp}, not a key in trusted_app_keys and its digest is not "
               "in accepted_app_digests")


@pytest.mark.parametrize(("policy", "message"), [
    ({"trusted_app_keys": ["ed25519:XYZ"]},
     "[policy] trusted_app_keys: 'ed25519:XYZ' is not 'ed25519:<16 lowercase hex>' (a key "
     "fingerprint) or 64 lowercase hex (a public key)"),
    ({"accepted_app_digests": ["sha256:abc"]},
     "[policy] accepted_app_digests: 'sha256:abc' is not 'sha256:<64 lowercase hex>'"),
    ({"accepted_app_digests": D},
     f"[policy] accepted_app_digests must be a list of 'sha256:<64 lowercase hex>', got {D!r}"),
])
def test_malformed_code_policy_is_one_line_exit_2(tmp_path: Path, policy: dict, message: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = write_site_toml(tmp_path / "site.toml", policy=policy)
    code = main(["site", "start", "--config", str(path), "--check"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"fedsilo site start: error: {path}: {message}\n"


def test_site_config_reads_the_code_policy(tmp_path: Path) -> None:
    fp = "ed25519:0123456789abcdef"
    path = write_site_toml(tmp_path / "site.toml", policy={"trusted_app_keys": [fp], "max_rounds": 3})
    cfg = read_site_config(path)
    assert cfg.code_policy == CodePolicy(trusted_app_keys=[fp]) and cfg.policy.max_rounds == 3


def test_runner_refuses_with_ledger_entry(app: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = write_site_toml(tmp_path / "site" / "site.toml", site_id="h1")
    (app / "mine.py").write_text("raise SystemExit('imported')\n")
    fab = build_fab_from_disk(app)
    context = Context(run_id=7, node_id=1, node_config={SITE_CONFIG_KEY: str(path)},
                      state=RecordDict(), run_config={"run-id": ""})
    bundle, reason = check_bundle(fab, context)
    assert bundle is not None
    assert reason == (f"site h1 refused app bundle {bundle.digest}: it carries Python code of its "
                      "own (mine.py); this site runs only fedsilo's own ClientApp")
    assert capsys.readouterr().err == f"fedsilo site: {reason}\n"
    [entry] = [json.loads(x) for x in (tmp_path / "site" / "ledger.jsonl").read_text().splitlines()]
    assert (entry["run_id"], entry["status"], entry["reason"], entry["app_digest"]) == (
        "flwr-7", "refused", reason, bundle.digest)
    assert check_bundle(b"not a zip", context)[1] == (
        "site h1 refused the app bundle: the app bundle is not a readable zip (File is not a zip file)")


def test_wrapper_is_an_executable_flwr_clientapp(tmp_path: Path) -> None:
    path = write_wrapper(tmp_path / "bin")
    assert path.name == "flwr-clientapp"
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    assert "from fedsilo.client.app_runner import main" in path.read_text()


def test_app_sign_cli(app: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = _key(tmp_path, "k")
    assert main(["app", "sign", str(app), "--key", str(tmp_path / "k.pem")]) == 0
    digest = _bundle(app).digest
    assert capsys.readouterr().out == (f"fedsilo app: signed {digest} with "
                                       f"{key_fingerprint(public_key_hex(key))} -> {app / SIGNATURE_FILE}\n")
    assert main(["app", "digest", str(app)]) == 0
    assert capsys.readouterr().out == f"{digest}\n"
    missing = tmp_path / "none.pem"
    assert main(["app", "sign", str(app), "--key", str(missing)]) == 2
    assert capsys.readouterr().err == (f"fedsilo app sign: error: --key {missing}: file not found "
                                       "(an Ed25519 private key, PEM)\n")
    assert main(["app", "digest", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"fedsilo app digest: error: {tmp_path}: no pyproject.toml "
                                       "(not a Flower app directory)\n")


def test_unsigned_bundle_where_signatures_are_required(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    server = tmp_path / "server.toml"
    server.write_text('[superlink]\ninsecure = true\nrequire_signed_apps = true\n')
    run = tmp_path / "run.toml"
    run.write_text('dataset = "digits"\nsites = 2\nrounds = 1\n')
    assert main(["server", "run", "--config", str(run), "--server", str(server)]) == 2
    assert capsys.readouterr().err == (
        f"fedsilo server run: error: {server}: superlink.require_signed_apps is true but "
        "superlink.app_key is not set: runs would submit unsigned app bundles, which the sites "
        "refuse; set app_key to the Ed25519 key (PEM) the sites trust\n")
    assert not (tmp_path / "state").exists()  # nothing started, nothing written
    server.write_text(f'[superlink]\ninsecure = true\napp_key = "{tmp_path / "nokey.pem"}"\n')
    assert main(["server", "run", "--config", str(run), "--server", str(server)]) == 2
    assert capsys.readouterr().err == (
        f"fedsilo server run: error: {server}: superlink.app_key {tmp_path / 'nokey.pem'}: file not "
        "found (an Ed25519 private key, PEM)\n")


def test_bad_key_file_is_refused(tmp_path: Path, app: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key\n")
    os.chmod(bad, 0o600)
    assert main(["app", "sign", str(app), "--key", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fedsilo app sign: error: --key {bad}: not an Ed25519 private key (")
    assert err.count("\n") == 1
    with pytest.raises(AppCodeError, match="not a readable zip"):
        read_bundle(b"PK\x03\x04 broken")


def test_server_records_the_app_digest_each_site_reports(tmp_path: Path) -> None:
    """In-process federation (no network): a well-formed digest goes into genesis; a
    malformed one refuses the site at the handshake, and the refusal is in genesis too."""
    from integration.test_contribution_bounds import _run, site_field

    from fedsilo.lineage import load_chain, verify_run

    digest = "sha256:" + "ab" * 32
    outcome, run_dir = _run(tmp_path, "good", forges={"site-001": site_field("app_digest", digest, "query")},
                            sites=3, rounds=1)
    assert outcome.error is None, outcome.error
    sites = load_chain(run_dir).genesis["sites"]
    assert [s.get("app_digest") for s in sites] == [None, digest, None]
    assert verify_run(run_dir).ok

    outcome, run_dir = _run(tmp_path, "bad", forges={"site-001": site_field("app_digest", "sha256:x", "query")},
                            sites=3, rounds=1)
    problem = "(site-001): app digest 'sha256:x' is not 'sha256:<64 hex>'"
    assert outcome.error is not None and problem in str(outcome.error)
    genesis = load_chain(run_dir).genesis
    assert [s["site_id"] for s in genesis["sites"]] == ["site-000", "site-002"]
    assert [n for n in genesis["notes"] if problem in n] != []
    report = verify_run(run_dir)
    assert report.ok and report.closed, report.summary


def test_a_trusted_bundle_runs_its_own_clientapp(app: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Accepted by signature, a bundle naming its own ClientApp is installed and loaded as
    Flower does (into this test's FLWR_HOME); fedsilo's own is taken from the install."""
    import hashlib
    import sys
    from types import SimpleNamespace

    from flwr.clientapp import ClientApp
    from flwr.supercore.fab import Fab

    from fedsilo.client.app_runner import load_app
    from fedsilo.simulations.flower_app import client_app

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    fab = build_fab_from_disk(app)
    run = SimpleNamespace(fab_id="fedsilo/fedsilo-flower-app", fab_version="0.1.0")
    assert load_app(read_bundle(fab), run, Fab(hashlib.sha256(fab).hexdigest(), fab, {})) is client_app
    text = (app / "pyproject.toml").read_text().replace(OWN_CLIENTAPP, "signed_app.client:app")
    (app / "pyproject.toml").write_text(text)
    (app / "signed_app").mkdir()
    (app / "signed_app" / "__init__.py").write_text("")
    (app / "signed_app" / "client.py").write_text("from flwr.clientapp import ClientApp\napp = ClientApp()\n")
    sign_app_dir(app, _key(tmp_path, "t"))
    fab = build_fab_from_disk(app)
    bundle = read_bundle(fab)
    assert bundle.code_files == ["signed_app/__init__.py", "signed_app/client.py"]
    try:
        loaded = load_app(bundle, run, Fab(hashlib.sha256(fab).hexdigest(), fab, {}))
        assert isinstance(loaded, ClientApp) and loaded is not client_app
        assert sys.modules["signed_app.client"].app is loaded
    finally:
        for name in ("signed_app.client", "signed_app"):
            sys.modules.pop(name, None)
