"""Seeded 1-D Cartesian random masks with fastMRI ``RandomMaskFunc`` semantics.

Columns (phase-encoding lines, the last image axis) are kept: a fully sampled central band of
``round(W * center_fraction)`` lines, plus each other line with probability
``(W / acceleration - n_low) / (W - n_low)``, so that the expected acceleration is
``acceleration``. fastMRI pairs 4x with center fraction 0.08 and 8x with 0.04.
"""

from __future__ import annotations

import contextlib
import zlib
from typing import Iterator, Sequence

import numpy as np

#: The fastMRI pairing of acceleration and center fraction.
CENTER_FRACTIONS = {4: 0.08, 8: 0.04}


@contextlib.contextmanager
def _temp_seed(rng: np.random.RandomState, seed: int | Sequence[int] | None) -> Iterator[None]:
    """Reseed ``rng`` for the block and restore its state afterwards (fastMRI's ``temp_seed``)."""
    if seed is None:
        yield
        return
    state = rng.get_state()
    rng.seed(seed)
    try:
        yield
    finally:
        rng.set_state(state)


class RandomMaskFunc:
    """Callable mask generator: ``mask = RandomMaskFunc([0.04], [8])(num_cols, seed=...)``.

    With several (center_fraction, acceleration) pairs, one pair is drawn per call, as in
    fastMRI. The returned mask is a float32 vector of length ``num_cols`` with ones at the
    sampled columns.
    """

    def __init__(self, center_fractions: Sequence[float], accelerations: Sequence[int],
                 seed: int | None = None):
        if len(center_fractions) != len(accelerations):
            raise ValueError("center_fractions and accelerations must have the same length")
        if not accelerations:
            raise ValueError("at least one acceleration is needed")
        self.center_fractions = list(center_fractions)
        self.accelerations = list(accelerations)
        self.rng = np.random.RandomState(seed)

    def __call__(self, num_cols: int, seed: int | Sequence[int] | None = None) -> np.ndarray:
        with _temp_seed(self.rng, seed):
            choice = self.rng.randint(len(self.accelerations))
            center_fraction = self.center_fractions[choice]
            acceleration = self.accelerations[choice]
            num_low = round(num_cols * center_fraction)
            center = np.zeros(num_cols, dtype=np.float32)
            pad = (num_cols - num_low + 1) // 2
            center[pad:pad + num_low] = 1
            prob = (num_cols / acceleration - num_low) / (num_cols - num_low)
            accel = (self.rng.uniform(size=num_cols) < prob).astype(np.float32)
        return np.maximum(center, accel)


def slice_seed(base_seed: int, volume: str, slice_index: int) -> tuple[int, int, int]:
    """A platform-independent seed for one slice: (base seed, CRC32 of the volume name, slice)."""
    return (int(base_seed) & 0xFFFFFFFF, zlib.crc32(volume.encode()), int(slice_index))


def mask_for_slice(volume: str, slice_index: int, num_cols: int, acceleration: int,
                   center_fraction: float | None = None, base_seed: int = 0) -> np.ndarray:
    """The fixed test mask of one slice: the same on every run and machine."""
    cf = CENTER_FRACTIONS[acceleration] if center_fraction is None else center_fraction
    func = RandomMaskFunc([cf], [acceleration])
    return func(num_cols, seed=slice_seed(base_seed, volume, slice_index))
