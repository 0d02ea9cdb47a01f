"""server.toml parsing, the generated Flower App, command lines (no processes started)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import tomli_w

from fedsilo.client.deploy import supernode_argv
from fedsilo.client.site_config import read_site_config
from fedsilo.server.certs import CertsLayout
from fedsilo.server.config import RunConfig
from fedsilo.server.deploy import (
    read_server_settings,
    superlink_argv,
    write_app_dir,
    write_flwr_config,
)
from fedsilo.server.deploy_procs import DeployError
from fedsilo.simulations.flower_app import run_config_dict

from .conftest import write_site_toml


def _server(tmp: Path, certs: CertsLayout, **link: object) -> Path:
    path = tmp / "server.toml"
    path.write_text(tomli_w.dumps({
        "superlink": {"port": 9999, "ca_cert": str(certs.ca_cert), "cert": str(certs.server_cert),
                      "key": str(certs.server_key), **link},
        "sites": {"a": str(certs.site_public_key("a"))},
    }))
    return path


def test_superlink_command_line_has_tls_auth_and_no_runtime_installs(tmp_path: Path, certs: CertsLayout) -> None:
    s = read_server_settings(_server(tmp_path, certs, state_dir="st"))
    argv = superlink_argv(s)
    assert argv[0].endswith("flower-superlink")
    assert argv[1:] == ["--host", "127.0.0.1", "--port", "9999", "--database", str(tmp_path / "st" / "superlink.db"),
                        "--disable-runtime-dependency-installation", "--ssl-ca-certfile", str(certs.ca_cert),
                        "--ssl-certfile", str(certs.server_cert), "--ssl-keyfile", str(certs.server_key),
                        "--enable-supernode-auth"]


def test_flwr_config_names_our_superlink_explicitly(tmp_path: Path, certs: CertsLayout) -> None:
    s = read_server_settings(_server(tmp_path, certs, host="0.0.0.0"))
    doc = tomllib.loads(write_flwr_config(s).read_text())
    assert doc == {"superlink": {"default": "fedsilo", "fedsilo": {
        "address": "127.0.0.1:9999", "root-certificates": str(certs.ca_cert)}}}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"superlink": {"port": "9092"}}, "superlink.port must be a int, got '9092'"),
        ({"superlink": {"colour": 1}}, r"unknown keys \['colour'\] in \[superlink\]"),
        ({"superlink": {"insecure": False, "ca_cert": "a", "cert": "b", "key": "c"}},
         r"\[sites\] is empty"),
        ({"other": {}}, r"unknown tables \['other'\]"),
    ],
)
def test_bad_server_toml(tmp_path: Path, doc: dict, message: str) -> None:
    path = tmp_path / "server.toml"
    path.write_text(tomli_w.dumps(doc))
    with pytest.raises(DeployError, match=message):
        read_server_settings(path)


def test_generated_app_is_a_valid_flower_app(tmp_path: Path) -> None:
    from flwr.cli.config_utils import load_and_validate

    cfg = RunConfig.from_dict({"rounds": 2, "sites": 3, "run_id": "r1", "dp": {"enabled": False}})
    values = {k.replace("_", "-"): v for k, v in cfg.to_dict().items()}
    app = write_app_dir(tmp_path / "app", {**values, "server-key": ""})
    config, warnings = load_and_validate(app / "pyproject.toml")
    assert config is not None, warnings
    flwr_app = config["tool"]["flwr"]["app"]
    assert flwr_app["components"] == {"serverapp": "fedsilo.server.flower_app:server_app",
                                      "clientapp": "fedsilo.client.flower_app:client_app"}
    assert flwr_app["config"]["rounds"] == 2 and flwr_app["config"]["dp"]["enabled"] is False


def test_flat_run_config_back_to_runconfig_shape() -> None:
    flat = {"rounds": 3, "local-epochs": 2, "dp.enabled": True, "dp.clip-norm": 0.5, "run-id": ""}
    assert run_config_dict(flat) == {"rounds": 3, "local_epochs": 2, "run_id": "",
                                     "dp": {"enabled": True, "clip_norm": 0.5}}


def test_example_app_is_valid_and_points_at_fedsilo() -> None:
    from flwr.cli.config_utils import load_and_validate

    app = Path(__file__).resolve().parents[2] / "examples" / "flower-app"
    config, warnings = load_and_validate(app / "pyproject.toml")
    assert config is not None, warnings
    assert config["tool"]["flwr"]["app"]["components"]["clientapp"] == "fedsilo.client.flower_app:client_app"
    raw = run_config_dict(config["tool"]["flwr"]["app"]["config"])
    raw.pop("server_key")
    raw.pop("run_id")
    assert raw.pop("resume") is False
    assert RunConfig.from_dict(raw).sites == 3


def test_supernode_command_line(tmp_path: Path, certs: CertsLayout) -> None:
    path = write_site_toml(tmp_path / "site.toml", supernode={
        "insecure": False, "ca_cert": str(certs.ca_cert), "auth_key": str(certs.site_key("a")),
        "runtime_port": 9123, "superlink": "fl.example.org:9092"})
    argv = supernode_argv(read_site_config(path))
    assert argv[1:] == ["--superlink", "fl.example.org:9092", "--host", "127.0.0.1", "--port", "9123",
                        "--node-config", f'site-config="{path}"', "--root-certificates", str(certs.ca_cert),
                        "--auth-supernode-private-key", str(certs.site_key("a"))]
    from flwr.common.config import parse_config_args

    node_config = argv[argv.index("--node-config") + 1]
    assert parse_config_args([node_config]) == {"site-config": str(path)}
