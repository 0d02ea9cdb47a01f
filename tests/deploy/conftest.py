"""Fixtures of the deployment tests: a certificate directory and site.toml writers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tomli_w

from fedsilo.server.certs import CertsLayout, init_certs


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertsLayout:
    """CA, server certificate for 127.0.0.1/localhost, auth keys for sites a, b, c, d."""
    return init_certs(tmp_path_factory.mktemp("certs"), ["127.0.0.1", "localhost"], ["a", "b", "c", "d"])


def write_site_toml(path: Path, **fields: Any) -> Path:
    """Write a site.toml; ``fields`` override a minimal valid insecure site."""
    doc: dict[str, Any] = {
        "site_id": "a",
        "trainer": "deploy.fake_trainers:good",
        "key": "lineage.pem",
        "ledger": "ledger.jsonl",
        "supernode": {"superlink": "127.0.0.1:9", "insecure": True, "runtime_port": 9},
    }
    for key, value in fields.items():
        if value is None:
            doc.pop(key, None)
        elif isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(doc))
    return path
