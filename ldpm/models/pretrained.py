"""Loading a component of a local Stable Diffusion folder (diffusers layout), never from a hub."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from ..errors import LdpmInputError

T = TypeVar("T")


def load_sd_component(cls: type[T], sd_path: str | Path, subfolder: str) -> T:
    """``cls.from_pretrained(sd_path, subfolder=...)`` from local files, with a clear error."""
    path = Path(sd_path)
    if not (path / subfolder / "config.json").is_file():
        raise LdpmInputError(path, f"has no {subfolder}/config.json",
                             "pass a local Stable Diffusion 2-1-base folder (diffusers layout)")
    return cls.from_pretrained(path, subfolder=subfolder, local_files_only=True,
                               low_cpu_mem_usage=False)
