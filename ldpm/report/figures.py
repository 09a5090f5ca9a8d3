"""Figures: ground truth, each method's reconstruction and its error map (Fig. 2 style)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..io import atomic_path  # noqa: E402
from .tables import METHOD_NAMES  # noqa: E402


def read_keys(path: Path, dataset: str) -> dict[tuple[str, int], np.ndarray]:
    """``{(volume, slice): image}`` from a shard or reconstruction file."""
    with h5py.File(path, "r") as f:
        vols = [v.decode() if isinstance(v, bytes) else str(v) for v in f["volume"][()]]
        return {(v, int(s)): img for v, s, img in zip(vols, f["slice"][()], f[dataset][()])}


def pick_examples(keys: Sequence[tuple[str, int]], n: int) -> list[tuple[str, int]]:
    """The middle slice of ``n`` volumes spread over the test set (deterministic)."""
    by_volume: dict[str, list[int]] = {}
    for volume, s in sorted(keys):
        by_volume.setdefault(volume, []).append(s)
    volumes = sorted(by_volume)
    step = max(1, len(volumes) // max(n, 1))
    return [(v, by_volume[v][len(by_volume[v]) // 2]) for v in volumes[::step][:n]]


def plot_examples(gt: Mapping[tuple[str, int], np.ndarray],
                  recons: Mapping[str, Mapping[tuple[str, int], np.ndarray]],
                  examples: Sequence[tuple[str, int]], out_png: Path,
                  error_scale: float = 0.2) -> Path:
    """Rows: examples; columns: GT then each method, with the error map beneath each."""
    methods = list(recons)
    n_rows, n_cols = 2 * len(examples), 1 + len(methods)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.2 * n_cols, 2.2 * n_rows), squeeze=False)
    for r, key in enumerate(examples):
        x = gt[key]
        vmax = float(x.max()) or 1.0
        ax = axes[2 * r, 0]
        ax.imshow(x, cmap="gray", vmin=0, vmax=vmax)
        ax.set_title(f"GT {key[0][-12:]}:{key[1]}", fontsize=7)
        axes[2 * r + 1, 0].axis("off")
        for c, m in enumerate(methods, start=1):
            y = recons[m][key]
            err = np.abs(y - x) / vmax
            psnr = 10 * np.log10(1.0 / max(np.mean(err ** 2), 1e-12))
            axes[2 * r, c].imshow(y, cmap="gray", vmin=0, vmax=vmax)
            axes[2 * r, c].set_title(f"{METHOD_NAMES.get(m, m)}\n{psnr:.2f} dB", fontsize=7)
            axes[2 * r + 1, c].imshow(err, cmap="inferno", vmin=0, vmax=error_scale)
            axes[2 * r + 1, c].set_title("|error|", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    out_png = Path(out_png)
    for suffix in (".png", ".pdf"):
        with atomic_path(out_png.with_suffix(suffix)) as tmp:
            fig.savefig(tmp, dpi=150, format=suffix[1:])
    plt.close(fig)
    return out_png
