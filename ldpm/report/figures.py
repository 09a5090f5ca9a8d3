"""Figures: ground truth, reconstructions and error maps (Fig. 2: methods; Fig. 3: VAEs).

Every figure is written as PNG and PDF next to each other (``out_png`` and its ``.pdf``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..io import atomic_path, open_hdf5  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from .tables import METHOD_NAMES  # noqa: E402


def read_keys(path: Path, dataset: str) -> dict[tuple[str, int], np.ndarray]:
    """``{(volume, slice): image}`` from a shard or reconstruction file."""
    with open_hdf5(path, "reconstruction or test shard") as f:
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
    return save_figure(fig, out_png)


def save_figure(fig, out_png: Path) -> Path:
    """Write ``fig`` as ``out_png`` and the same name with ``.pdf`` (atomically), then close it."""
    out_png = Path(out_png)
    for suffix in (".png", ".pdf"):
        with atomic_path(out_png.with_suffix(suffix)) as tmp:
            fig.savefig(tmp, dpi=150, format=suffix[1:])
    plt.close(fig)
    return out_png


def _fmt(metric: Mapping | None, decimals: int, unit: str = "") -> str:
    value = None if metric is None else metric.get("value")
    return "n/a" if value is None else f"{value:.{decimals}f}{unit}"


def _zoom(ax, img: np.ndarray, vmin: float, vmax: float, cmap: str, frac: float = 0.25) -> None:
    """A dashed box around the central patch and that patch, enlarged, in the lower right."""
    h, w = img.shape
    ph, pw = max(2, int(h * frac)), max(2, int(w * frac))
    top, left = (h - ph) // 2, (w - pw) // 2
    ax.add_patch(Rectangle((left - 0.5, top - 0.5), pw, ph, fill=False, ec="yellow", ls="--", lw=0.8))
    inset = ax.inset_axes([0.6, 0.0, 0.4, 0.4])
    inset.imshow(img[top:top + ph, left:left + pw], cmap=cmap, vmin=vmin, vmax=vmax)
    inset.set_xticks([])
    inset.set_yticks([])
    for spine in inset.spines.values():
        spine.set_edgecolor("yellow")


def plot_vae_comparison(gt: Mapping[tuple[str, int], np.ndarray],
                        recons: Mapping[str, Mapping[tuple[str, int], np.ndarray]],
                        set_metrics: Mapping[str, Mapping[str, Mapping]],
                        examples: Sequence[tuple[str, int]], out_png: Path,
                        error_scale: float = 0.2) -> Path:
    """Fig. 3: per example row, GT, then for each VAE its reconstruction (with a zoomed central
    patch) and its error map. Column titles carry each VAE's PSNR/SSIM/rFID over the test set
    (``set_metrics[label]`` = the ``metrics`` block of its summary.json)."""
    labels = list(recons)
    n_cols = 1 + 2 * len(labels)
    fig, axes = plt.subplots(len(examples), n_cols, figsize=(2.4 * n_cols, 2.5 * len(examples) + 0.6),
                             squeeze=False, layout="constrained")  # constrained: room for the insets
    for r, key in enumerate(examples):
        x = gt[key]
        vmax = float(x.max()) or 1.0
        axes[r, 0].imshow(x, cmap="gray", vmin=0, vmax=vmax)
        _zoom(axes[r, 0], x, 0, vmax, "gray")
        axes[r, 0].set_title(f"GT {key[0].removeprefix('file_brain_')}:{key[1]}", fontsize=7)
        for j, label in enumerate(labels):
            y = recons[label][key]
            err = np.abs(y - x) / vmax
            psnr = 10 * np.log10(1.0 / max(float(np.mean(err ** 2)), 1e-12))
            ax_img, ax_err = axes[r, 1 + 2 * j], axes[r, 2 + 2 * j]
            ax_img.imshow(y, cmap="gray", vmin=0, vmax=vmax)
            _zoom(ax_img, y, 0, vmax, "gray")
            ax_err.imshow(err, cmap="inferno", vmin=0, vmax=error_scale)
            m = set_metrics.get(label, {})
            head = (f"{label}\ntest set: PSNR {_fmt(m.get('psnr'), 2, ' dB')}, SSIM {_fmt(m.get('ssim'), 4)},"
                    f"\nrFID {_fmt(m.get('rfid'), 2)}\n" if r == 0 else "")
            ax_img.set_title(f"{head}this slice: {psnr:.2f} dB", fontsize=7)
            ax_err.set_title(f"|error| {label} (0-{error_scale:g})", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    return save_figure(fig, out_png)


