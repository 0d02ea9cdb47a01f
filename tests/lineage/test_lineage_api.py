"""The public API the lead wires in keeps exactly the agreed names and signatures."""

from __future__ import annotations

import inspect

import fedsilo.lineage as lineage
from fedsilo.lineage import cli


def test_public_names_exported() -> None:
    agreed = {
        "SCHEMA_VERSION",
        "canonical_json",
        "sha256_hex",
        "arrays_digest",
        "update_digest",
        "load_or_create_key",
        "public_key_hex",
        "key_fingerprint",
        "contribution_message",
        "sign_contribution",
        "verify_contribution",
        "data_fingerprint",
        "manifest_for",
        "GenesisRecord",
        "SiteIdentity",
        "SiteJoinRecord",
        "SiteContribution",
        "RoundRecord",
        "ResumeRecord",
        "ClosingRecord",
        "LineageWriter",
        "SiteLedger",
        "read_chain",
        "verify_run",
        "VerifyReport",
        "contributors",
        "reconcile",
        "export_jsonl",
        "export_prov_json",
    }
    assert agreed <= set(lineage.__all__)
    assert all(hasattr(lineage, name) for name in lineage.__all__)
    assert lineage.SCHEMA_VERSION == "fedsilo.lineage/1"
    assert callable(cli.add_lineage_parser) and callable(cli.main)


def test_record_field_order() -> None:
    def params(cls: type) -> list[str]:
        return list(inspect.signature(cls).parameters)

    assert params(lineage.RoundRecord) == [
        "round",
        "sampled",
        "replied",
        "accepted",
        "rejected",
        "dropped",
        "contributions",
        "model_in",
        "model_out",
        "strategy",
        "metrics",
        "timings",
        "status",
        "reason",
        "privacy",
        "secagg",
        "extra",
        "evaluations",  # optional, last: records built positionally before it still work
    ]
    assert params(lineage.SiteContribution) == [
        "site_id",
        "update_digest",
        "num_examples",
        "data_fingerprint",
        "signature",
        "fate",
        "score",
        "detail",
        "prev",  # optional, last: a chained attestation's link
    ]
    assert params(lineage.GenesisRecord) == [
        "run_id",
        "created_at",
        "config",
        "code_version",
        "initial_model_digest",
        "server_public_key",
        "sites",
        "notes",
        "task",  # optional, last: the task identity (issue 20)
    ]
    assert params(lineage.ClosingRecord) == [
        "reason",
        "detail",
        "rounds_completed",
        "final_model_digest",
        "epsilon_spent",
    ]
    assert params(lineage.ResumeRecord) == ["resumed_at", "from_round", "reason"]
    assert params(lineage.SiteJoinRecord) == ["site", "round"]
    assert params(lineage.SiteIdentity) == ["site_id", "public_key", "data_fingerprint", "policy",
                                            "num_examples", "declaration", "app_digest"]
    report_fields = {"ok", "records", "first_failure", "summary"}
    assert report_fields <= set(lineage.VerifyReport.__dataclass_fields__)
