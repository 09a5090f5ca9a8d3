"""Reconstruction methods as one registry: name -> function(shard, checkpoints, options) -> images.

Layout: :mod:`.graph` (torch-free: stages, methods and what each reads), :mod:`.registry`
(``register``), and one module per family, imported by :func:`load_registry`: zero-filled
(here), :mod:`.baselines`, :mod:`.ldpm` (LDPM and its ablations), and those of each registered
study (:class:`.graph.Study`).

Every method sees exactly the same input: the test shard's ground truth is only used to
simulate the measurement ``k_u = M * F(x)`` with the stored mask; the method then gets
``(k_u, M)`` and returns magnitude images. Reconstructions are written with the shard's keys,
every method's clipped at 0 (:func:`as_magnitude`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Mapping

import h5py
import numpy as np

from ..errors import LdpmInputError
from ..io import atomic_path, write_text_atomic
from ..mri import undersample, zero_filled
from ..mri.masks import slice_seed
from .graph import (BASELINES, LDPM_VARIANTS, MULTICOIL_METHODS, SKETCHER_ONLY, Study, all_stages,
                    method_options, method_stages, register_study, stage_dependencies, step_variant,
                    studies, study_methods)
from .registry import METHODS, Method, Reconstruction, register


@register("zero_filled")
def zero_filled_recon(k_u: np.ndarray, mask: np.ndarray, checkpoints: Mapping[str, Path],
                      options: dict) -> np.ndarray:
    """Zero-filled reconstruction ``|F^-1(k_u)|``: the lower bound of Table I."""
    return np.abs(zero_filled(k_u)).astype(np.float32)


def measure(target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The simulated measurement of each slice: ``k_u = M * F(x)`` (nPI, single-coil RSS)."""
    return undersample(target.astype(np.complex64), mask[:, None, :]).astype(np.complex64)


def as_magnitude(recon: np.ndarray) -> np.ndarray:
    """A reconstruction as the magnitude image it estimates: values below 0 set to 0 (NaN and
    inf pass through, for the evaluation to refuse). Image-domain networks (U-Net, SwinMR)
    output negative values in the background, and how many depends on the training's float
    rounding; LDPM's sampler and the multicoil RSS are non-negative already."""
    recon = np.asarray(recon, dtype=np.float32)
    return np.where(np.isfinite(recon) & (recon < 0), np.float32(0.0), recon)


def load_registry() -> dict[str, Method]:
    """All methods: importing their modules registers them (torch is only imported here),
    then each registered study registers its own."""
    from . import baselines, ldpm  # noqa: F401

    for study in studies():
        if study.load_methods is not None:
            study.load_methods()

    return METHODS


def seeds_for(volumes, slices, seed: int) -> list[int]:
    """One 32-bit seed per slice from ``(seed, volume, slice)``: independent of sharding."""
    return [int(np.random.SeedSequence(slice_seed(seed, v.decode() if isinstance(v, bytes) else str(v),
                                                  int(s))).generate_state(1)[0])
            for v, s in zip(volumes, slices)]


def timing_path(recon_path: str | Path) -> Path:
    """``shard0.h5`` -> ``shard0.timing.json``: a method's own timings (e.g. ``sampling_seconds``,
    the time spent sampling, networks' loading excluded) and the whole call's ``seconds``."""
    recon_path = Path(recon_path)
    return recon_path.with_name(f"{recon_path.stem}.timing.json")


def reconstruct_shard(method: str, shard_path: Path, out_path: Path,
                      checkpoints: Mapping[str, Path] | None = None,
                      options: dict | None = None) -> None:
    """Reconstruct every slice of a test shard with ``method``; write ``recon`` + keys."""
    base, steps = step_variant(method)
    if base not in METHODS:
        load_registry()
    if base not in METHODS:
        raise LdpmInputError(f"method {method!r}", "unknown method",
                             f"use one of: {', '.join(sorted(METHODS))}")
    from ..data.store import read_test_shard

    shard = read_test_shard(shard_path)
    target, mask, volume, slices = (shard[k] for k in ("target", "mask", "volume", "slice"))
    options = dict(options or {}, **({"n_steps": steps} if steps else {}))
    options["slice_seeds"] = seeds_for(volume, slices, int(options.get("seed", 0)))
    if base in MULTICOIL_METHODS:  # which raw slice each row is
        options["volumes"] = [v.decode() if isinstance(v, bytes) else str(v) for v in volume]
        options["slices"] = [int(s) for s in slices]
    start = time.perf_counter()
    timings: dict[str, float] = {}
    if len(target):
        recon = METHODS[base](measure(target, mask), mask, dict(checkpoints or {}), options)
        if isinstance(recon, Reconstruction):  # a method's own timings, e.g. its sampling_seconds
            recon, timings = recon.images, dict(recon.timings)
    else:
        recon = np.zeros_like(target, dtype=np.float32)
    if recon.shape != target.shape:
        raise LdpmInputError(f"method {method!r}", f"returned shape {recon.shape}, expected "
                             f"{target.shape}", "fix the method's output size")
    if timings:  # clock readings go beside the recon file, which stays byte-reproducible
        write_text_atomic(timing_path(out_path), json.dumps(
            {"method": method, "n_slices": len(target), "seconds": time.perf_counter() - start,
             **timings}, indent=2) + "\n")
    with atomic_path(out_path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("recon", data=as_magnitude(recon))
            f.create_dataset("volume", data=volume)
            f.create_dataset("slice", data=slices)
            f.attrs["method"] = method


__all__ = ["BASELINES", "LDPM_VARIANTS", "METHODS", "MULTICOIL_METHODS", "Method", "Reconstruction",
           "SKETCHER_ONLY", "Study", "all_stages", "as_magnitude", "load_registry", "measure",
           "method_options", "method_stages", "reconstruct_shard", "register", "register_study",
           "seeds_for", "stage_dependencies", "step_variant", "studies", "study_methods",
           "timing_path"]
