"""Digests of model arrays and flat update vectors.

Byte layout hashed by :func:`arrays_digest` (all integers unsigned 64-bit little-endian)::

    u64(number of arrays)
    for each array, sorted by name (Python ``str`` order, i.e. by code point):
        u64(len(name_utf8))   name_utf8
        u64(len(dtype_str))   dtype_str        # numpy ``dtype.str``, ASCII, e.g. b"<f4"
        u64(ndim * 8)         u64(dim_0) ... u64(dim_{ndim-1})
        u64(nbytes)           the array's bytes in C (row-major) order

The digest is ``"sha256:" + hexdigest``. Recomputing it from a saved ``model.npz``::

    import hashlib, struct, numpy as np
    def lp(b): return struct.pack("<Q", len(b)) + b
    z = np.load("model.npz")
    h = hashlib.sha256(struct.pack("<Q", len(z.files)))
    for name in sorted(z.files):
        a = np.ascontiguousarray(z[name])
        h.update(lp(name.encode()) + lp(a.dtype.str.encode()))
        h.update(lp(b"".join(struct.pack("<Q", d) for d in a.shape)))
        h.update(lp(a.tobytes()))
    print("sha256:" + h.hexdigest())
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .canonical import DIGEST_PREFIX
from .errors import LineageError

_U64 = struct.Struct("<Q")


def _lp(data: bytes) -> bytes:
    return _U64.pack(len(data)) + data


def arrays_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """Digest a named set of arrays (a model or an update), see the module docstring.

    Args:
        arrays: mapping from array name (``str``) to a numpy array (or numpy scalar,
            hashed as a 0-d array) of a fixed-size dtype (numeric or bool; object dtype is rejected). Arrays need not be
            contiguous: they are hashed in C order.

    Returns:
        ``"sha256:<64 hex>"``.

    Raises:
        ValueError: if a name is not a ``str``, a value is not an ndarray, or an array
            has object dtype.
    """
    if not isinstance(arrays, Mapping):
        raise ValueError(f"arrays must be a mapping name -> ndarray, got {type(arrays).__name__}")
    h = hashlib.sha256(_U64.pack(len(arrays)))
    for name in sorted(arrays):
        if not isinstance(name, str):
            raise ValueError(f"array names must be str, got {type(name).__name__} {name!r}")
        array = arrays[name]
        if isinstance(array, np.generic):
            array = np.asarray(array)
        if not isinstance(array, np.ndarray):
            raise ValueError(f"array {name!r} must be a numpy ndarray, got {type(array).__name__}")
        if array.dtype.hasobject:
            raise ValueError(f"array {name!r} has object dtype; expected a fixed-size dtype")
        contiguous = np.ascontiguousarray(array)
        h.update(_lp(name.encode("utf-8")))
        h.update(_lp(contiguous.dtype.str.encode("ascii")))
        h.update(_lp(b"".join(_U64.pack(d) for d in contiguous.shape)))
        h.update(_U64.pack(contiguous.nbytes))
        h.update(contiguous.reshape(-1).view(np.uint8))
    return DIGEST_PREFIX + h.hexdigest()


def update_digest(flat: np.ndarray) -> str:
    """Digest one flat update vector: ``arrays_digest({"update": flat})``.

    Args:
        flat: the 1-D update exactly as the site sends it (normally float32).

    Raises:
        ValueError: if ``flat`` is not a 1-D numpy array.
    """
    if not isinstance(flat, np.ndarray) or flat.ndim != 1:
        shape = getattr(flat, "shape", None)
        raise ValueError(f"update must be a 1-D numpy array, got {type(flat).__name__} {shape}")
    return arrays_digest({"update": flat})


def npz_digest(path: Path) -> str:
    """Digest the arrays of a saved ``.npz`` file (as written by ``np.savez``).

    Args:
        path: the ``.npz`` file; it is opened read-only, pickles are refused.

    Raises:
        LineageError: if the file is missing or is not a readable ``.npz`` archive.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not hasattr(archive, "files"):
                raise LineageError(f"{path}: not an .npz archive of named arrays")
            return arrays_digest({name: archive[name] for name in archive.files})
    except LineageError:
        raise
    except FileNotFoundError:
        raise LineageError(f"{path}: file not found") from None
    except (OSError, ValueError, EOFError) as exc:
        raise LineageError(f"{path}: not a readable .npz model file ({exc})") from None
    except Exception as exc:  # zipfile.BadZipFile and friends from a corrupted archive
        raise LineageError(f"{path}: corrupted .npz model file ({type(exc).__name__})") from None
