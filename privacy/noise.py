"""Gaussian noise for DP: cryptographically secure or seeded.

* ``secure=True`` (deployments): uniform bits come from a ChaCha20 keystream
  (``cryptography``), keyed by 32 bytes of ``os.urandom`` drawn afresh for every call,
  with a random nonce. The bits become standard normals with the Box-Muller transform
  in numpy (both the cosine and the sine branch are used), computed in float64 and
  scaled to float32. An observer who knows every previous draw learns nothing about
  the next one, which is not true of ``numpy.random`` (Flower's DP noise source).
* ``secure=False`` (simulations): ``numpy.random.Generator(PCG64(seed))``, so a run is
  reproducible from its seed. Never use it where the noise protects real data.

Known limit: the normals are floating-point numbers. Floating-point Gaussian samplers
leak through the low-order bits of their outputs in the worst case (Mironov 2012 for
Laplace; Jin et al. 2022 for Gaussian); a discrete Gaussian would close that gap and
is not implemented here.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

_CHUNK = 1 << 20  # normals produced per keystream block (bounds float64 scratch memory)
_TWO_PI = 2.0 * np.pi
_INV_2_53 = 1.0 / float(1 << 53)


class GaussianNoise:
    """Source of i.i.d. N(0, std^2) float32 noise.

    Args:
        secure: True for the CSPRNG (ChaCha20 keystream keyed from ``os.urandom``),
            False for a seeded numpy PCG64 generator.
        seed: seed of the numpy generator (``secure=False`` only; None = fresh entropy).
            A secure source cannot be seeded.
    """

    def __init__(self, *, secure: bool, seed: int | None = None) -> None:
        if secure and seed is not None:
            raise ValueError("seed: a secure noise source cannot be seeded; pass seed=None")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed: expected an integer >= 0 or None, got {seed!r}")
        self.secure = secure
        self.seed = seed
        self._rng = None if secure else np.random.Generator(np.random.PCG64(seed))

    @property
    def name(self) -> str:
        """Generator name recorded in lineage."""
        if self.secure:
            return "chacha20-os.urandom/box-muller"
        return f"numpy.pcg64(seed={self.seed})" if self.seed is not None else "numpy.pcg64"

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable generator state (empty for the secure source, which has none)."""
        if self._rng is None:
            return {"secure": True}
        return {"secure": False, "seed": self.seed, "bit_generator": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (a resumed simulation draws the same noise).

        Args:
            state: saved state of a source of the same kind (secure or seeded).
        """
        if not isinstance(state, dict) or state.get("secure") != self.secure:
            raise ValueError(
                f"noise state: expected state of a {'secure' if self.secure else 'seeded'} source"
            )
        if self._rng is not None:
            self._rng.bit_generator.state = state["bit_generator"]

    def normal(self, std: float, size: int) -> np.ndarray:
        """Return ``size`` float32 draws from N(0, std^2).

        Args:
            std: standard deviation (>= 0).
            size: number of draws (>= 0).
        """
        if not np.isfinite(std) or std < 0:
            raise ValueError(f"std: expected a finite number >= 0, got {std!r}")
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 0:
            raise ValueError(f"size: expected an integer >= 0, got {size!r}")
        if self._rng is not None:
            out = self._rng.standard_normal(int(size), dtype=np.float32)
            out *= np.float32(std)
            return out
        return _secure_normal(float(std), int(size))


def _secure_normal(std: float, size: int) -> np.ndarray:
    out = np.empty(size, dtype=np.float32)
    encryptor = Cipher(algorithms.ChaCha20(os.urandom(32), os.urandom(16)), mode=None).encryptor()
    for start in range(0, size, _CHUNK):
        n = min(_CHUNK, size - start)
        pairs = (n + 1) // 2
        words = np.frombuffer(encryptor.update(bytes(16 * pairs)), dtype=np.uint64)
        # 53 random bits -> uniform on (0, 1] (u1, never 0 so log is finite) and [0, 1) (u2).
        uniform = (words >> np.uint64(11)).astype(np.float64) * _INV_2_53
        radius = np.sqrt(-2.0 * np.log1p(-uniform[:pairs]))
        angle = _TWO_PI * uniform[pairs:]
        block = np.concatenate((radius * np.cos(angle), radius * np.sin(angle)))[:n]
        out[start : start + n] = block * std
    return out
