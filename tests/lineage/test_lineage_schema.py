"""The record dataclasses are the lineage schema: validation and the dict form derive from
them (field names, type hints, ``checked`` rules), and fates are enums."""

from __future__ import annotations

import dataclasses

import pytest

from fedsilo.lineage import Fate, SecAggFate, SiteContribution, SiteIdentity, validate_body
from fedsilo.lineage.records import RECORD_CLASSES, RoundRecord
from fedsilo.lineage.schema import body_of, validator_for

D0 = "sha256:" + "0" * 64
SIG = "ab" * 64


def _contribution(**kw: object) -> SiteContribution:
    return SiteContribution("s1", D0, 5, D0, SIG, **kw)  # type: ignore[arg-type]


def test_every_dataclass_field_is_a_schema_field() -> None:
    """A field added to a record class is checked at once: leaving it out of a body that
    must carry it is named as missing; an unknown key is named as unknown."""
    for name, cls in RECORD_CLASSES.items():
        validate = validator_for(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("absent_ok"):
                continue
            body = {g.name: None for g in dataclasses.fields(cls) if g.name != f.name}
            with pytest.raises(ValueError, match=rf"missing fields \['{f.name}'\]"):
                validate(body, name)
    with pytest.raises(ValueError, match=r"unknown fields \['bogus'\]"):
        validate_body("round", {**RoundRecord(1, [], [], [], {}, [], [], D0, D0, {}, {}, {})
                                .to_dict(), "bogus": 1})


def test_fate_is_an_enum_and_stored_as_its_string() -> None:
    c = SiteContribution.from_dict(_contribution(fate="rejected").to_dict())
    assert c.fate is Fate.REJECTED
    stored = c.to_dict()["fate"]
    assert stored == "rejected" and type(stored) is str  # plain JSON, digests unchanged
    assert type(_contribution(fate=Fate.ACCEPTED).to_dict()["fate"]) is str
    with pytest.raises(ValueError, match="fate: expected 'accepted' or 'rejected'"):
        SiteContribution.from_dict({**c.to_dict(), "fate": "rejected:krum"})


@pytest.mark.parametrize(
    ("label", "fate"),
    [("accepted", Fate.ACCEPTED), ("clipped", Fate.ACCEPTED), ("trimmed", Fate.ACCEPTED),
     ("downweighted", Fate.ACCEPTED), ("rejected", Fate.REJECTED),
     ("rejected:krum", Fate.REJECTED), ("rejected:not aggregated", Fate.REJECTED)],
)
def test_fate_of_aggregation_label(label: str, fate: Fate) -> None:
    assert Fate.of_aggregation(label) is fate


def test_secagg_fates_are_the_stored_strings() -> None:
    assert {f.value for f in SecAggFate} == {"in_sum", "recovered", "dropped", "aborted"}


def test_omit_empty_fields_keep_old_digests() -> None:
    """``declaration``/``app_digest`` (omit_empty) are left out when None, as before they
    existed; ``num_examples`` (absent_ok) is always written, and read when absent."""
    site = SiteIdentity("s1", "ab" * 32, D0)
    assert body_of(site) == {"site_id": "s1", "public_key": "ab" * 32, "data_fingerprint": D0,
                             "policy": {}, "num_examples": None}
    old = {k: v for k, v in site.to_dict().items() if k != "num_examples"}
    assert SiteIdentity.from_dict(old) == site
