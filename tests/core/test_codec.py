import io

import numpy as np
import pytest
from flwr.app import Array

from fedsilo.common import codec
from fedsilo.common.codec import LayoutError, ModelLayout, decode_flat, encode_flat


def test_encode_matches_numpy_save_and_decode_is_zero_copy() -> None:
    vec = np.linspace(-1, 1, 1001, dtype=np.float32)
    arr = encode_flat(vec)
    buf = io.BytesIO()
    np.save(buf, vec)
    assert arr.data == buf.getvalue()  # Flower's own Array.numpy() can read it
    assert np.array_equal(arr.numpy(), vec)
    view = decode_flat(arr)
    assert np.array_equal(view, vec)
    assert not view.flags.owndata and not view.flags.writeable  # a view over the message bytes
    assert np.shares_memory(view, np.frombuffer(arr.data, dtype=np.uint8))


def test_decode_reads_flowers_own_arrays() -> None:
    vec = np.arange(7, dtype=np.float32)
    assert np.array_equal(decode_flat(Array(vec)), vec)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros(4, dtype=np.float64), "dtype float64; expected float32"),
        (np.zeros((2, 2), dtype=np.float32), "expected a 1-D vector"),
    ],
)
def test_decode_rejects_wrong_dtype_and_shape(array: np.ndarray, message: str) -> None:
    with pytest.raises(LayoutError, match=message):
        decode_flat(Array(array))


def test_decode_rejects_wrong_length_and_truncated_bytes() -> None:
    arr = encode_flat(np.zeros(10, np.float32))
    with pytest.raises(LayoutError, match="has 10 values; expected 11"):
        decode_flat(arr, expected_size=11)
    bad = Array(dtype="float32", shape=(10,), stype="numpy.ndarray", data=arr.data[:-4])
    with pytest.raises(LayoutError, match="carries 36 bytes; header promises 40"):
        decode_flat(bad)
    junk = Array(dtype="float32", shape=(10,), stype="numpy.ndarray", data=b"not npy at all")
    with pytest.raises(LayoutError, match="not numpy .npy bytes"):
        decode_flat(junk)


def test_layout_round_trip() -> None:
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([7.0, 8.0], np.float32)}
    layout = ModelLayout.from_arrays(arrays)
    flat = layout.flatten(arrays)
    assert flat.tolist() == [0, 1, 2, 3, 4, 5, 7, 8]
    back = layout.unflatten(flat)
    assert list(back) == ["w", "b"] and back["w"].shape == (2, 3)
    assert ModelLayout.from_json(layout.to_json()) == layout
    with pytest.raises(LayoutError, match="missing layers"):
        layout.flatten({"w": arrays["w"]})


def test_record_lookup_matches_flowers_typed_views() -> None:
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

    content = RecordDict({
        "site": ConfigRecord({"site_id": "a"}),
        "metrics": MetricRecord({"num-examples": 3}),
        "global": ArrayRecord({"model": codec.encode_flat(np.zeros(4, dtype=np.float32))}),
    })
    for kind, view in ((ConfigRecord, content.config_records),
                       (MetricRecord, content.metric_records),
                       (ArrayRecord, content.array_records)):
        for name in ("site", "metrics", "global", "missing"):
            assert codec.record(content, name, kind) is view.get(name), (kind, name)
    assert codec.record(content, "site", ConfigRecord)["site_id"] == "a"
