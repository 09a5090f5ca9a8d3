"""Fig. 3's data: every ground-truth test slice encoded and decoded by each VAE.

Two VAEs: ``mr`` (the trained MR-VAE, ``<vae_dir>/final``) and ``untuned`` (the VAE it was
fine-tuned from: Stable Diffusion's when ``sd_path`` is given, else the natural-image VAE of the
``vae_natural`` stage; :func:`ldpm.methods.ldpm.untuned_vae`). Each slice is divided by
``max |x_u|`` under its stored test mask (:func:`ldpm.mri.measurement_scale`, the scale LDPM
works in), passed through ``E`` then ``D``
(:func:`ldpm.models.vae_encode` / :func:`~ldpm.models.vae_decode`, the posterior mean, as
LDPM uses them) and multiplied back; the output is not clipped.

Output, one HDF5 file per VAE: ``recon`` [N,H,W] float32, ``target`` [N,H,W] float32 (the
ground truth it encoded, copied from the test shards), ``volume``, ``slice``, ``volume_max``;
attrs ``vae`` (mr|untuned), ``label`` (MR-VAE | SD-VAE | untuned VAE) and ``source``. A file
holds both ``recon`` and ``target``, so ``ldpm evaluate --recon F --data F`` scores it with the
same code as every method (no second metric implementation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import h5py
import numpy as np

from ..errors import LdpmInputError
from ..io import atomic_path, open_hdf5

VAE_KINDS = ("mr", "untuned")


def vae_label(kind: str, sd_path: str | None) -> str:
    if kind == "mr":
        return "MR-VAE"
    return "SD-VAE" if sd_path else "natural-image VAE (untuned)"


def vae_source(kind: str, vae_dir: Path, sd_path: str | None, untuned_dir: Path | None) -> str:
    if kind == "mr":
        return f"trained MR-VAE: {Path(vae_dir) / 'final'}"
    if sd_path:
        return f"Stable Diffusion VAE: {Path(sd_path) / 'vae'}"
    return (f"VAE trained on scikit-image's bundled photographs: {Path(untuned_dir) / 'final'}; "
            "no Stable Diffusion weights configured (pretrained.sd_path)")


def load_vae_kind(kind: str, vae_dir: Path, sd_path: str | None, untuned_dir: Path | None = None):
    from ..methods.ldpm import untuned_vae
    from ..checkpoints import load_vae

    if kind not in VAE_KINDS:
        raise LdpmInputError(f"vae {kind!r}", "unknown VAE", f"use one of {list(VAE_KINDS)}")
    return load_vae(vae_dir) if kind == "mr" else untuned_vae(untuned_dir, sd_path)


def _read_test_shards(paths: Sequence[Path]) -> dict[str, np.ndarray | list]:
    from ..data.store import check_test_shard, read_shard

    parts = [read_shard(p) for p in paths]
    for path, part in zip(paths, parts):
        missing = [k for k in ("target", "mask", "volume", "slice") if k not in part]
        if missing:
            raise LdpmInputError(path, f"test shard has no {missing} dataset(s)",
                                 "rebuild it with the test-shard step (ldpm test-shard)")
        check_test_shard(path, np.asarray(part["target"]), np.asarray(part["mask"]),
                         part["volume"], np.asarray(part["slice"]))
    parts = [p for p in parts if len(p["target"])]
    if not parts:
        raise LdpmInputError(", ".join(map(str, paths)) or "vae-recon", "no test slices",
                             "pass the non-empty test shards")
    target = np.concatenate([p["target"] for p in parts]).astype(np.float32)
    volumes = [v for p in parts for v in p["volume"]]
    slices = np.concatenate([np.asarray(p["slice"], np.int64) for p in parts])
    if all("volume_max" in p for p in parts):
        vmax = np.concatenate([np.asarray(p["volume_max"], np.float32) for p in parts])
    else:  # older shards: the max over the volume's test slices
        per_vol: dict[str, float] = {}
        for v, img in zip(volumes, target):
            per_vol[v] = max(per_vol.get(v, 0.0), float(img.max()))
        vmax = np.array([per_vol[v] for v in volumes], np.float32)
    if not np.all(vmax > 0):
        raise LdpmInputError(", ".join(map(str, paths)), "a volume's max is not positive",
                             "drop empty volumes from the test split")
    mask = np.concatenate([np.asarray(p["mask"], np.float32) for p in parts])
    return {"target": target, "volume": volumes, "slice": slices, "volume_max": vmax, "mask": mask}


def autoencode(vae, images: np.ndarray, batch_size: int = 8, device: str = "cpu") -> np.ndarray:
    """``D(E(x))`` of [N,H,W] normalised images, batch by batch; float32 [N,H,W]."""
    import torch

    from ..models import vae_decode, vae_encode

    vae = vae.to(device)
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size]))[:, None].to(device)
            out.append(vae_decode(vae, vae_encode(vae, x))[:, 0].float().cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def vae_recon_test_set(shard_paths: Sequence[str | Path], vae_dir: str | Path, sd_path: str | None,
                       outputs: Mapping[str, str | Path], batch_size: int = 8,
                       device: str | None = None,
                       untuned_dir: str | Path | None = None) -> dict[str, Path]:
    """Write ``outputs[kind]`` (kind in :data:`VAE_KINDS`) for every test slice; see the module doc."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    sd_path = sd_path or None
    unknown = [k for k in outputs if k not in VAE_KINDS]
    if unknown or not outputs:
        raise LdpmInputError("vae-recon --output", f"unknown or no VAE kinds {unknown}",
                             f"give --output KIND=FILE for KIND in {list(VAE_KINDS)}")
    data = _read_test_shards([Path(p) for p in shard_paths])
    from ..methods import measure
    from ..mri import measurement_scale, zero_filled

    x_u = torch.from_numpy(np.abs(zero_filled(measure(data["target"], data["mask"]))))[:, None]
    scale = measurement_scale(x_u)[:, 0].numpy().astype(np.float32)   # [N, 1, 1]
    x = (data["target"] / scale).astype(np.float32)
    untuned_dir = Path(untuned_dir) if untuned_dir else None
    written = {}
    for kind, out in outputs.items():
        vae = load_vae_kind(kind, Path(vae_dir), sd_path, untuned_dir)
        recon = autoencode(vae, x, batch_size, device) * scale
        with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
            f.create_dataset("recon", data=recon.astype(np.float32))
            f.create_dataset("target", data=data["target"])
            f.create_dataset("volume", data=np.array(data["volume"], dtype=object),
                             dtype=h5py.string_dtype())
            f.create_dataset("slice", data=data["slice"])
            f.create_dataset("volume_max", data=data["volume_max"])
            f.attrs.update({"vae": kind, "label": vae_label(kind, sd_path),
                            "source": vae_source(kind, Path(vae_dir), sd_path, untuned_dir),
                            "scaling": "slice / max|x_u| -> E -> D -> * max|x_u| (not clipped)"})
        written[kind] = Path(out)
    return written


def read_vae_recon(path: str | Path) -> tuple[str, dict, dict]:
    """``(label, {(volume, slice): target}, {(volume, slice): recon})`` of one VAE file."""
    with open_hdf5(path, "VAE reconstruction", "run the vae-recon step first",
                   "rerun the vae-recon step (the file is truncated or not HDF5)") as f:
        missing = [k for k in ("volume", "slice", "target", "recon") if k not in f]
        if missing:
            raise LdpmInputError(path, f"VAE reconstruction has no {missing} dataset(s)",
                                 "rerun the vae-recon step")
        vols = [v.decode() if isinstance(v, bytes) else str(v) for v in f["volume"][()]]
        keys = list(zip(vols, (int(s) for s in f["slice"][()])))
        label = str(f.attrs.get("label", Path(path).stem))
        return label, dict(zip(keys, f["target"][()])), dict(zip(keys, f["recon"][()]))
