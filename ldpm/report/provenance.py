"""What produced a run: config, git commit, every installed package's version, the
accelerator, and the SHA-256 of the data files, of every raw input volume and of every external
weight file the config names (SD, VGG, LPIPS, Inception, the official fastMRI checkpoints)."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..io import write_text_atomic

#: where the config names external weights (a file, or a folder whose every file is hashed)
WEIGHT_KEYS = ("pretrained.sd_path", "pretrained.vgg16_path", "pretrained.vgg19_path",
               "metrics.lpips_backbone", "metrics.inception_weights",
               "inference.unet_official.checkpoint", "inference.varnet_official.checkpoint")


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def git_commit(repo: Path | None = None) -> str:
    """The current commit (with ``-dirty`` if the tree has changes), or ``unknown``."""
    repo = repo or Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True,
                                capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               check=True, capture_output=True, text=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    """Every installed distribution -> its version."""
    out = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            out[name.lower()] = dist.version
    return dict(sorted(out.items()))


def accelerator() -> dict[str, Any]:
    """torch's CUDA build and the GPUs this job sees (none on a CPU run)."""
    import torch

    gpus = ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if torch.cuda.is_available() else [])
    return {"torch_cuda": torch.version.cuda, "gpus": gpus}


def _hashes(paths: Sequence[Path]) -> dict[str, str]:
    return {str(p): sha256(p) if p.is_file() else "absent" for p in paths}


def weight_files(config: Mapping[str, Any]) -> list[Path]:
    """The external weight files the config names (every file of a named folder)."""
    files: list[Path] = []
    for key in WEIGHT_KEYS:
        value: Any = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if value:
            path = Path(str(value))
            files += sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    return files


def input_volumes(manifest: Path | None) -> list[Path]:
    """The raw volumes the manifest's slice stores were made from (sorted, normalised)."""
    if manifest is None:
        return []
    import os

    from ..data.store import raw_sources

    return sorted({Path(os.path.normpath(p)) for p in raw_sources(manifest).values()})


def write_provenance(out_path: Path, config_json: str, hashed_files: Sequence[Path],
                     manifest: Path | None = None) -> None:
    config = json.loads(config_json)
    record = {
        "config": config,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "accelerator": accelerator(),
        "data_sha256": {str(p): sha256(Path(p)) for p in hashed_files},
        "input_sha256": _hashes(input_volumes(manifest)),
        "weights_sha256": _hashes(weight_files(config)),
    }
    write_text_atomic(out_path, json.dumps(record, indent=2, sort_keys=True) + "\n")
