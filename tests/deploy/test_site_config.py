"""site.toml: parsing, Trainer entry points, the Site the ClientApp builds from it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fedsilo.client.site_config import (
    SiteConfigError,
    load_site,
    load_trainer,
    read_site_config,
)

from .conftest import write_site_toml


def test_read_resolves_paths_and_policy(tmp_path: Path) -> None:
    path = write_site_toml(
        tmp_path / "s" / "site.toml",
        policy={"allowed_aggregators": ["mean"], "max_rounds": 4, "server_key_fingerprints": ["ed25519:00"]},
        supernode={"insecure": False, "ca_cert": "c/ca.pem", "auth_key": "c/auth_key", "runtime_port": 9100},
        trainer_options={"step": 1.5},
    )
    cfg = read_site_config(path)
    assert cfg.site_id == "a"
    assert cfg.key == tmp_path / "s" / "lineage.pem"
    assert cfg.supernode.ca_cert == tmp_path / "s" / "c" / "ca.pem"
    assert cfg.supernode.runtime_port == 9100
    assert cfg.policy.allowed_aggregators == ["mean"] and cfg.policy.max_rounds == 4
    assert cfg.trainer_options == {"step": 1.5}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"trainer": None}, "trainer is missing"),
        ({"trainer": "no_colon"}, "trainer must be 'module:function', got 'no_colon'"),
        ({"site_id": 3}, "site_id must be a str, got 3"),
        ({"policy": {"max_round": 3}}, r"\[policy\]: site policy: unknown keys \['max_round'\]"),
        ({"colour": "blue"}, r"unknown keys \['colour'\]"),
        ({"supernode": {"insecure": False}}, r"\[supernode\] needs ca_cert and auth_key"),
        ({"supernode": {"runtime_port": "9"}}, "supernode.runtime_port must be a int, got '9'"),
    ],
)
def test_bad_site_toml_is_one_clear_error(tmp_path: Path, fields: dict, message: str) -> None:
    path = write_site_toml(tmp_path / "site.toml", **fields)
    with pytest.raises(SiteConfigError, match=message) as info:
        read_site_config(path)
    assert "\n" not in str(info.value)


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(SiteConfigError, match="file not found"):
        read_site_config(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("site_id = ")
    with pytest.raises(SiteConfigError, match="not valid TOML"):
        read_site_config(tmp_path / "bad.toml")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("deploy.no_such_module:make", "cannot import 'deploy.no_such_module'"),
        ("deploy.fake_trainers:missing", "deploy.fake_trainers has no function 'missing'"),
        ("deploy.fake_trainers:NOT_CALLABLE", "has no function 'NOT_CALLABLE'"),
        ("deploy.fake_trainers:wrong_type",
         "returned dict, expected a fedsilo.client.Trainer (fit, evaluate, data_fingerprint)"),
    ],
)
def test_trainer_entry_point_errors(entry: str, message: str) -> None:
    with pytest.raises(SiteConfigError) as info:
        load_trainer(entry, {}, "site.toml")
    assert message in str(info.value)
    assert str(info.value).startswith(f"site.toml: trainer {entry!r}")


def test_trainer_options_mismatch_is_reported() -> None:
    with pytest.raises(SiteConfigError, match="failed with \\[trainer_options\\]"):
        load_trainer("deploy.fake_trainers:good", {"colour": 1}, "site.toml")


def test_load_site_builds_key_ledger_policy_and_answers_a_round(tmp_path: Path) -> None:
    from flwr.app import ArrayRecord, ConfigRecord, RecordDict
    from helpers.messages import message  # tests/ is on sys.path (rootdir conftest)

    from fedsilo.client.app import _train_reply
    from fedsilo.common import codec
    from fedsilo.lineage.signing import verify_contribution

    path = write_site_toml(tmp_path / "site.toml", trainer_options={"step": 0.5, "examples": 11},
                           policy={"allowed_aggregators": ["mean"]})
    site = load_site(path)
    assert site is load_site(path)  # cached per file version
    assert site.site_id == "a" and (tmp_path / "lineage.pem").exists()
    weights = {"w": np.zeros((2, 3), np.float32), "b": np.ones(3, np.float32)}
    layout = codec.ModelLayout.from_arrays(weights)
    content = RecordDict({
        codec.GLOBAL_RECORD: ArrayRecord({codec.MODEL_KEY: codec.encode_flat(layout.flatten(weights))}),
        codec.CONFIG_RECORD: ConfigRecord({"aggregator": "mean", "server_round": 1, "run_id": "r",
                                           "layout": layout.to_json()}),
    })
    msg = message(content, src_node_id=0)
    reply = _train_reply(site, msg)
    delta = codec.decode_flat(reply.content.array_records[codec.UPDATE_RECORD][codec.DELTA_KEY])
    np.testing.assert_array_equal(delta, np.full(9, 0.5, np.float32))
    rec = reply.content.config_records[codec.SITE_RECORD]
    assert verify_contribution(site.public_key, rec["signature"], "r", 1, rec["update_digest"],
                               "sha256:" + "ab" * 32)
    entries = site.ledger.entries()
    assert [e["status"] for e in entries] == ["sent"] and entries[0]["num_examples"] == 11


def test_flower_app_node_site_dispatch(tmp_path: Path) -> None:
    from fedsilo.simulations.flower_app import node_site

    path = write_site_toml(tmp_path / "site.toml", site_id="hospital-x")
    site = node_site(SimpleNamespace(node_config={"site-config": str(path)}), {})  # type: ignore[arg-type]
    assert site.site_id == "hospital-x"
    sim = node_site(SimpleNamespace(node_config={"partition-id": 1}),  # type: ignore[arg-type]
                    {"dataset": "wine", "sites": 3, "partition": "iid", "seed": 0, "batch_size": 8})
    assert sim.site_id != "hospital-x" and sim.key is None


def test_bundled_trainer_matches_simulated_site() -> None:
    from fedsilo.simulations.flower_app import bundled_trainer, node_site

    trainer = bundled_trainer(dataset="wine", partition_id=2, sites=3, partition="iid", seed=1)
    sim = node_site(SimpleNamespace(node_config={"partition-id": 2}),  # type: ignore[arg-type]
                    {"dataset": "wine", "sites": 3, "partition": "iid", "seed": 1, "batch_size": 32})
    assert trainer.data_fingerprint() == sim.data_fingerprint
    with pytest.raises(ValueError, match=r"partition_id: expected an integer in \[0, 3\), got 3"):
        bundled_trainer(dataset="wine", partition_id=3, sites=3)
