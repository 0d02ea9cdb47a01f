"""One flat float32 vector per model, and the layout that gives it back its layers.

A model (or a site's update) travels as a single flat float32 array plus a
`ModelLayout` (layer names, shapes, dtypes). The server decodes a reply with
`decode_flat`, which views the message's bytes without copying them; the new
global model is encoded once with `encode_flat`. Lineage digests and secure
aggregation masks work on exactly these bytes.

Flower stores an `Array` as the bytes of a ``.npy`` file. `Array.numpy()` goes
through `np.load` (a copy); `decode_flat` parses the same header and returns an
`np.frombuffer` view instead.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from . import npy
from .errors import FedsiloError

FLAT_DTYPE = np.dtype("<f4")
_Record = TypeVar("_Record", ArrayRecord, ConfigRecord, MetricRecord)


class LayoutError(FedsiloError, ValueError):
    """An array or a layout does not match what was expected."""


@dataclass(frozen=True)
class ModelLayout:
    """Names, shapes and dtypes of a model's layers, in their flattening order.

    Parameters
    ----------
    names : layer names, in order.
    shapes : one shape per layer.
    dtypes : one numpy dtype string per layer (``"float32"``...); layers are
        flattened to float32 and cast back to this dtype on `unflatten`.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> ModelLayout:
        """Layout of a mapping of named arrays, in the mapping's order."""
        return cls(
            names=tuple(arrays),
            shapes=tuple(tuple(int(s) for s in a.shape) for a in arrays.values()),
            dtypes=tuple(str(np.asarray(a).dtype) for a in arrays.values()),
        )

    @property
    def sizes(self) -> np.ndarray:
        return np.array([int(np.prod(s)) for s in self.shapes], dtype=np.int64)

    @property
    def size(self) -> int:
        """Length of the flat vector."""
        return int(self.sizes.sum())

    def flatten(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        """Concatenate the layers (in layout order) into one float32 vector."""
        missing = [n for n in self.names if n not in arrays]
        if missing:
            raise LayoutError(f"missing layers {missing}; expected {list(self.names)}")
        parts = [np.asarray(arrays[n], dtype=FLAT_DTYPE).reshape(-1) for n in self.names]
        flat = np.concatenate(parts) if parts else np.zeros(0, FLAT_DTYPE)
        if flat.size != self.size:
            raise LayoutError(f"arrays hold {flat.size} values; layout expects {self.size}")
        return flat

    def unflatten(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Split a flat vector back into named layers (views where the dtype is float32)."""
        if flat.ndim != 1 or flat.size != self.size:
            raise LayoutError(f"flat vector has shape {flat.shape}; layout expects ({self.size},)")
        bounds = np.cumsum(self.sizes)[:-1]
        chunks = np.split(flat, bounds) if self.names else []
        return {
            name: chunk.reshape(shape).astype(dtype, copy=False)
            for name, shape, dtype, chunk in zip(
                self.names, self.shapes, self.dtypes, chunks, strict=True
            )
        }

    def to_json(self) -> str:
        return json.dumps(
            {"names": self.names, "shapes": self.shapes, "dtypes": self.dtypes},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> ModelLayout:
        try:
            raw = json.loads(text)
            return cls(
                names=tuple(str(n) for n in raw["names"]),
                shapes=tuple(tuple(int(s) for s in shape) for shape in raw["shapes"]),
                dtypes=tuple(str(np.dtype(d)) for d in raw["dtypes"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise LayoutError(f"invalid model layout: {exc}") from None


def encode_flat(flat: np.ndarray) -> Array:
    """Wrap a 1-D float32 vector as a Flower `Array` (npy bytes) with a single copy."""
    vec = np.ascontiguousarray(flat, dtype=FLAT_DTYPE).reshape(-1)
    return Array(dtype=str(vec.dtype), shape=(vec.size,), stype="numpy.ndarray",
                 data=npy.vector_bytes(vec))


def decode_flat(array: Array, *, expected_size: int | None = None) -> np.ndarray:
    """View a Flower `Array` holding a 1-D float32 vector without copying its bytes.

    Raises `LayoutError` naming what was wrong when the array is not a 1-D
    little-endian float32 vector (of ``expected_size`` values when given).
    """
    data = array.data
    try:
        dtype, shape, fortran, offset = npy.layout(data)
    except npy.NpyError as exc:
        raise LayoutError(str(exc)) from None
    if dtype != FLAT_DTYPE:
        raise LayoutError(f"update has dtype {dtype}; expected float32")
    if len(shape) != 1 or fortran:
        raise LayoutError(f"update has shape {shape}; expected a 1-D vector")
    if expected_size is not None and shape[0] != expected_size:
        raise LayoutError(f"update has {shape[0]} values; expected {expected_size}")
    if len(data) - offset != shape[0] * FLAT_DTYPE.itemsize:
        raise LayoutError(
            f"update carries {len(data) - offset} bytes; header promises "
            f"{shape[0] * FLAT_DTYPE.itemsize}"
        )
    return np.frombuffer(data, dtype=FLAT_DTYPE, count=shape[0], offset=offset)





# Wire format of fedsilo's messages (record names inside a Flower RecordDict): defined
# with the typed messages in `fedsilo.common.protocol`, re-exported here for the code
# that has always imported them from the codec.
from .protocol import (  # noqa: E402, F401
    CONFIG_RECORD,
    DELTA_KEY,
    FEDERATION_RECORD,
    GLOBAL_RECORD,
    METRICS_RECORD,
    MODEL_KEY,
    NUM_EXAMPLES_KEY,
    REFUSAL_RECORD,
    SITE_RECORD,
    UPDATE_RECORD,
)


def record(content: RecordDict, name: str, kind: type[_Record]) -> _Record | None:
    """The record called ``name`` in ``content`` if it is a ``kind``, else None.

    Same answer as ``content.config_records.get(name)`` (and the array / metric
    variants) without its cost: Flower's typed views build a new type-checked dict of
    every record of that kind on each access (about 16 us for a five-record message),
    and the server reads several records of each of n replies per round.
    """
    rec = content.get(name)
    return rec if isinstance(rec, kind) else None

