"""Keys (creation, permissions, loading), contribution signatures, data fingerprints."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedsilo.lineage import (
    contribution_message,
    data_fingerprint,
    key_fingerprint,
    load_or_create_key,
    manifest_for,
    public_key_hex,
    sign_contribution,
    verify_contribution,
)
from fedsilo.lineage.errors import LineageError

UD = "sha256:" + "ab" * 32
FP = "sha256:" + "cd" * 32


def test_key_created_0600_in_0700_dir_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "site" / "deep" / "key.pem"
    key = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_key_hex(load_or_create_key(path)) == public_key_hex(key)
    assert [p.name for p in path.parent.iterdir()] == ["key.pem"]  # no temp file left


def test_loose_permissions_refused(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    load_or_create_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(LineageError, match="permissions are 0644; expected 0600"):
        load_or_create_key(path)


def test_foreign_key_files_refused(tmp_path: Path) -> None:
    ec_path = tmp_path / "ec.pem"
    ec_path.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(ec_path, 0o600)
    with pytest.raises(LineageError, match="expected an Ed25519 private key"):
        load_or_create_key(ec_path)
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"not a key")
    os.chmod(junk, 0o600)
    with pytest.raises(LineageError, match="not an unencrypted PEM private key"):
        load_or_create_key(junk)


def test_public_key_hex_and_fingerprint(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "k.pem")
    pub = public_key_hex(key)
    assert pub == public_key_hex(key.public_key())
    assert len(pub) == 64 and int(pub, 16) >= 0
    assert key_fingerprint("00" * 32) == "ed25519:66687aadf862bd77"
    with pytest.raises(ValueError, match="64 lowercase hex"):
        key_fingerprint("XYZ")


def test_contribution_message_exact_bytes() -> None:
    assert contribution_message("run-1", 3, UD, FP) == (
        b'{"data_fingerprint":"' + FP.encode() + b'","round":3,"run_id":"run-1",'
        b'"schema":"fedsilo.contribution/1","update_digest":"' + UD.encode() + b'"}'
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("", 1, UD, FP), "run_id must be a non-empty str"),
        (("r", -1, UD, FP), "round must be an int >= 0"),
        (("r", True, UD, FP), "round must be an int >= 0"),
        (("r", 1, "sha256:xyz", FP), "update_digest must be 'sha256:<64 hex>'"),
        (("r", 1, UD, "md5:00"), "data_fingerprint must be 'sha256:<64 hex>'"),
    ],
)
def test_contribution_message_validates(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        contribution_message(*args)


def test_sign_and_verify_each_field_bound(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "k.pem")
    other = load_or_create_key(tmp_path / "o.pem")
    pub = public_key_hex(key)
    sig = sign_contribution(key, "run-1", 3, UD, FP)
    assert len(sig) == 128
    assert verify_contribution(pub, sig, "run-1", 3, UD, FP)
    assert not verify_contribution(pub, sig, "run-2", 3, UD, FP)
    assert not verify_contribution(pub, sig, "run-1", 4, UD, FP)
    assert not verify_contribution(pub, sig, "run-1", 3, "sha256:" + "00" * 32, FP)
    assert not verify_contribution(pub, sig, "run-1", 3, UD, "sha256:" + "00" * 32)
    assert not verify_contribution(public_key_hex(other), sig, "run-1", 3, UD, FP)
    assert not verify_contribution(pub, "zz" * 64, "run-1", 3, UD, FP)
    assert not verify_contribution("nothex", sig, "run-1", 3, UD, FP)


def test_data_fingerprint_arrays_and_preprocessing() -> None:
    x = {"x": np.arange(6, dtype=np.float32), "y": np.array([0, 1], np.int64)}
    fp = data_fingerprint(x, preprocessing={"scaler": "standard"})
    assert fp == data_fingerprint(
        dict(reversed(list(x.items()))), preprocessing={"scaler": "standard"}
    )
    assert fp != data_fingerprint(x, preprocessing={"scaler": "minmax"})
    assert fp != data_fingerprint(
        {"x": x["x"] + 1, "y": x["y"]}, preprocessing={"scaler": "standard"}
    )
    assert fp.startswith("sha256:") and len(fp) == 71


def test_data_fingerprint_requires_exactly_one_source() -> None:
    with pytest.raises(ValueError, match="exactly one of arrays= or manifest="):
        data_fingerprint(preprocessing={})
    with pytest.raises(ValueError, match="exactly one of arrays= or manifest="):
        data_fingerprint({"x": np.zeros(1)}, manifest={"a": FP}, preprocessing={})
    with pytest.raises(ValueError, match="manifest entry 'a': digest must be"):
        data_fingerprint(manifest={"a": "abc"}, preprocessing={})
    with pytest.raises(ValueError, match="preprocessing must be a mapping"):
        data_fingerprint({"x": np.zeros(1)}, preprocessing=["scale"])  # type: ignore[arg-type]


def test_manifest_for_and_fingerprint(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.csv").write_bytes(b"abc")
    (data / "sub" / "b.csv").write_bytes(b"")
    manifest = manifest_for([data], root=data)
    assert manifest == {
        "a.csv": "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "sub/b.csv": "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    }
    fp = data_fingerprint(manifest=manifest, preprocessing={"drop_na": True})
    (data / "a.csv").write_bytes(b"abd")
    changed = data_fingerprint(
        manifest=manifest_for([data], root=data), preprocessing={"drop_na": True}
    )
    assert fp != changed
    with pytest.raises(ValueError, match="does not exist"):
        manifest_for([tmp_path / "nope"])
    with pytest.raises(ValueError, match="is not under root"):
        manifest_for([data / "a.csv"], root=tmp_path / "elsewhere")
