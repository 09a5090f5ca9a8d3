"""Seeded random streams: every generator of training, masks and degradations is a pure
function of integer keys, so a result depends on its seed and position only (not on the
order jobs or batches ran in)."""

from __future__ import annotations

import numpy as np
import torch


def derived_seed(*keys: int) -> int:
    """One 32-bit seed from the tuple ``keys`` (numpy's ``SeedSequence``, as
    :func:`seeded_generator`)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU torch generator seeded from the tuple ``keys`` (numpy's ``SeedSequence``: any
    tuple gives its own stream; a longer tuple never repeats a shorter one's)."""
    a, b = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint32)
    return torch.Generator(device="cpu").manual_seed(int(a) << 32 | int(b))


def step_generator(seed: int, step: int, *keys: int) -> torch.Generator:
    """The CPU generator of training step ``step``: seeded from ``(seed, step)`` only (more
    ``keys``: a stream of its own, e.g. per data-parallel rank, or per precomputed mask)."""
    return seeded_generator(int(seed) & 0xFFFFFFFF, int(step), *keys)
