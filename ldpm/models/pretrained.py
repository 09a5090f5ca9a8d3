"""Loading published weights from local files, never from a hub: a component of a Stable
Diffusion folder (diffusers layout), and fastMRI's released state dicts (:func:`load_state_dict_into`)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, TypeVar

import torch
from torch import nn

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


M = TypeVar("M", bound=nn.Module)


def load_state_dict_into(model: M, path: str | Path, *, arch: str, fix: str, arch_fix: str,
                         lightning_prefix: str = "") -> M:
    """``model`` with the weights of a local torch file, in eval mode.

    The file holds a plain state dict (fastMRI's downloads) or a Lightning checkpoint whose
    ``state_dict`` keys start with ``lightning_prefix``. Raises :class:`LdpmInputError` naming
    the file: missing or unreadable (``fix``), or weights of another architecture than ``arch``
    (a description of ``model``; ``arch_fix``).
    """
    path = Path(path)
    if not path.is_file():
        raise LdpmInputError(path, "weights file not found", fix)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise LdpmInputError(path, f"not a readable torch checkpoint ({type(e).__name__}: {e})",
                             fix) from e
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = {k.removeprefix(lightning_prefix): v for k, v in state["state_dict"].items()}
    if not isinstance(state, Mapping):
        raise LdpmInputError(path, f"holds a {type(state).__name__}, not a state dict", fix)
    ours = model.state_dict()
    shapes = {k for k in set(ours) & set(state) if tuple(ours[k].shape) != tuple(state[k].shape)}
    problems = [(what, keys) for what, keys in (("missing", set(ours) - set(state)),
                                                ("unexpected", set(state) - set(ours)),
                                                ("other shape", shapes)) if keys]
    if problems:
        detail = "; ".join(f"{what}: {', '.join(sorted(keys)[:3])}{' ...' if len(keys) > 3 else ''}"
                           for what, keys in problems)
        raise LdpmInputError(path, f"weights do not fit {arch} ({detail})", arch_fix)
    model.load_state_dict(state)
    return model.eval()
