"""1-D vectors as the bytes of a ``.npy`` file (how Flower stores an `Array`), without copies.

Flower's `Array.numpy()` goes through `np.load` (a copy) and `Array.from_numpy` through
`np.save`. The model codec (`common.codec`) and SecAgg's masked vectors
(`privacy.secagg.records`) instead write header + data with one copy and read a reply
back as an `np.frombuffer` view, checking every header field of the (untrusted) bytes.
"""

from __future__ import annotations

import ast
import io
from functools import lru_cache

import numpy as np

from .errors import FedsiloError

NPY_MAGIC = b"\x93NUMPY"


class NpyError(FedsiloError, ValueError):
    """The bytes are not a well-formed ``.npy`` file."""


@lru_cache(maxsize=64)
def vector_header(dtype: np.dtype, size: int) -> bytes:
    """The ``.npy`` v1.0 header (magic included) numpy writes for a 1-D C-order vector."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": (size,)})
    return buf.getvalue()


def vector_bytes(vec: np.ndarray) -> bytes:
    """``.npy`` bytes of a contiguous 1-D vector: one allocation, one copy of the data."""
    return b"".join((vector_header(vec.dtype, vec.size), memoryview(vec)))


@lru_cache(maxsize=64)
def _parse_header(text: bytes) -> tuple[np.dtype, tuple[int, ...], bool]:
    # cached: every reply of a round carries the same header, and parsing it costs more
    # than the checks
    try:
        header = ast.literal_eval(text.decode("latin1"))
        shape = tuple(int(x) for x in header["shape"])
        return np.dtype(header["descr"]), shape, bool(header["fortran_order"])
    except (ValueError, SyntaxError, KeyError, TypeError, AttributeError) as exc:
        raise NpyError(f"corrupt .npy header: {exc}") from None


def layout(data: object) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """``(dtype, shape, fortran_order, data_offset)`` of ``.npy`` bytes; `NpyError` if not."""
    if not isinstance(data, bytes | bytearray | memoryview) or bytes(data[:6]) != NPY_MAGIC \
            or len(data) < 10:
        raise NpyError("array is not numpy .npy bytes")
    major = data[6]
    if major == 1:
        hlen, start = int.from_bytes(data[8:10], "little"), 10
    elif major in (2, 3):
        hlen, start = int.from_bytes(data[8:12], "little"), 12
    else:
        raise NpyError(f"unsupported .npy format version {major}")
    dtype, shape, fortran = _parse_header(bytes(data[start:start + hlen]))
    return dtype, shape, fortran, start + hlen
