"""Canonical JSON, array digests and update digests: exact bytes and values."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsilo.lineage import (
    arrays_digest,
    canonical_json,
    npz_digest,
    sha256_hex,
    update_digest,
)
from fedsilo.lineage.errors import LineageError


def test_canonical_json_exact_bytes() -> None:
    obj = {"b": [1, 2.5, None, True], "a": {"z": "é", "y": -0.0}, "c": 'x"y'}
    assert (
        canonical_json(obj) == b'{"a":{"y":-0.0,"z":"\xc3\xa9"},"b":[1,2.5,null,true],"c":"x\\"y"}'
    )


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_canonical_json_rejects_non_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="non-finite float"):
        canonical_json({"x": [1, {"y": bad}]})


def test_canonical_json_rejects_non_string_keys_and_foreign_types() -> None:
    with pytest.raises(ValueError, match="keys must be str, got int 1"):
        canonical_json({"a": [{1: "x"}]})
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        canonical_json({"a": np.float32(1.0)})


def test_sha256_hex_known_value() -> None:
    assert sha256_hex(b"abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def _documented_recipe(arrays: dict[str, np.ndarray]) -> str:
    """The dozen lines of numpy from the docs, kept independent of the implementation."""

    def lp(b: bytes) -> bytes:
        return struct.pack("<Q", len(b)) + b

    h = hashlib.sha256(struct.pack("<Q", len(arrays)))
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(lp(name.encode()) + lp(a.dtype.str.encode()))
        h.update(lp(b"".join(struct.pack("<Q", d) for d in a.shape)))
        h.update(lp(a.tobytes()))
    return "sha256:" + h.hexdigest()


def test_arrays_digest_known_value_and_recipe() -> None:
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(2, np.float64)}
    digest = arrays_digest(arrays)
    # Pinned: a change of the byte layout must be a deliberate schema change.
    assert digest == "sha256:037eaf93fb54cb9a7520984b173a3442d219099b83cf561569577de7418a92f3"
    assert digest == _documented_recipe(arrays)


def test_update_digest_is_arrays_digest_of_update() -> None:
    flat = np.arange(4, dtype=np.float32)
    assert update_digest(flat) == arrays_digest({"update": flat})
    assert update_digest(flat) == (
        "sha256:4707a0b930edb5a57b4d242243b9ee6981d04a5e7176f97c4a3c454c6555dff6"
    )


@pytest.mark.parametrize("bad", [np.zeros((2, 2), np.float32), [1.0, 2.0], np.float32(1.0)])
def test_update_digest_requires_1d_array(bad: object) -> None:
    with pytest.raises(ValueError, match="update must be a 1-D numpy array"):
        update_digest(bad)  # type: ignore[arg-type]


def test_arrays_digest_sensitive_to_name_dtype_shape_and_bytes() -> None:
    base = {"w": np.arange(6, dtype=np.float32)}
    variants = [
        {"v": base["w"]},
        {"w": base["w"].astype(np.float64)},
        {"w": base["w"].reshape(2, 3)},
        {"w": base["w"] + 1},
        {"w": base["w"].astype(">f4")},
        {"w": base["w"], "x": np.zeros(0, np.float32)},
    ]
    digests = {arrays_digest(base)} | {arrays_digest(v) for v in variants}
    assert len(digests) == len(variants) + 1


def test_arrays_digest_ignores_mapping_order_and_memory_layout() -> None:
    a = np.arange(12, dtype=np.int64).reshape(3, 4)
    fortran = np.asfortranarray(a)
    assert arrays_digest({"a": a, "b": a[:, ::2]}) == arrays_digest(
        {"b": np.ascontiguousarray(a[:, ::2]), "a": fortran}
    )


def test_arrays_digest_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="array 'x' has object dtype"):
        arrays_digest({"x": np.array([object()])})
    with pytest.raises(ValueError, match="array 'x' must be a numpy ndarray, got list"):
        arrays_digest({"x": [1, 2]})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="array names must be str"):
        arrays_digest({1: np.zeros(1)})  # type: ignore[dict-item]


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(0, 4), min_size=0, max_size=3),
    dtype=st.sampled_from(["<f4", "<f8", "<i4", "|u1", "|b1", ">f8"]),
    name=st.text(min_size=1, max_size=8),
)
def test_arrays_digest_matches_recipe_property(shape: list[int], dtype: str, name: str) -> None:
    arr = np.arange(int(np.prod(shape)) if shape else 1).astype(dtype).reshape(shape)
    assert arrays_digest({name: arr, "~last": arr.T}) == _documented_recipe(
        {name: arr, "~last": arr.T}
    )


def test_npz_digest_equals_arrays_digest(tmp_path: Path) -> None:
    arrays = {"layer.0": np.ones((2, 2), np.float32), "bias": np.zeros(3, np.float32)}
    np.savez(tmp_path / "m.npz", **arrays)
    assert npz_digest(tmp_path / "m.npz") == arrays_digest(arrays)


def test_npz_digest_bad_files(tmp_path: Path) -> None:
    with pytest.raises(LineageError, match="file not found"):
        npz_digest(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(LineageError, match="junk.npz"):
        npz_digest(tmp_path / "junk.npz")


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None)
@given(value=_json_values)
def test_canonical_json_round_trips_and_is_stable(value: object) -> None:
    import json

    encoded = canonical_json(value)
    decoded = json.loads(encoded)
    assert decoded == value
    assert canonical_json(decoded) == encoded  # re-encoding parsed data gives the same bytes
    assert (
        encoded
        == json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )
