"""Loading weights from local files, never from a hub: a component of a Stable Diffusion folder
(diffusers layout), fastMRI's released state dicts (:func:`load_state_dict_into`), and the
checks that turn an unreadable checkpoint file (truncated, junk) into one
:class:`LdpmInputError` naming the file (:func:`check_checkpoint_folder`, :func:`read_json_file`,
:func:`load_safetensors_file`, :func:`loading_checkpoint`)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator, Mapping, TypeVar

import torch
from torch import nn

from ..errors import LdpmInputError

T = TypeVar("T")


def error_reason(e: BaseException, limit: int = 160) -> str:
    """``Type: first line of the message``, at most ``limit`` characters: one-line error detail."""
    lines = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def read_json_file(path: str | Path, fix: str) -> dict[str, Any]:
    """The JSON object in ``path``; :class:`LdpmInputError` naming it if missing, not JSON or
    not an object."""
    path = Path(path)
    if not path.is_file():
        raise LdpmInputError(path, "file not found", fix)
    try:
        obj = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise LdpmInputError(path, f"is not valid JSON ({error_reason(e)})", fix) from e
    if not isinstance(obj, dict):
        raise LdpmInputError(path, f"holds a JSON {type(obj).__name__}, not an object", fix)
    return obj


def check_safetensors_file(path: str | Path, fix: str) -> None:
    """Refuse a missing, truncated or junk safetensors file (reads its header only)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise LdpmInputError(path, "file not found", fix)
    try:
        with safe_open(str(path), "pt") as f:
            f.keys()
    except PermissionError:
        raise
    except Exception as e:  # noqa: BLE001 - SafetensorError and OS errors of a bad file alike
        raise LdpmInputError(path, f"is not a readable safetensors file ({error_reason(e)})",
                             fix) from e


def load_safetensors_file(path: str | Path, fix: str) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file(path)`` with :func:`check_safetensors_file`'s errors."""
    from safetensors.torch import load_file

    check_safetensors_file(path, fix)
    with loading_checkpoint(path, fix):
        return load_file(path)


def check_checkpoint_folder(folder: str | Path, fix: str) -> None:
    """Check every ``*.json`` and ``*.safetensors`` file directly in ``folder`` (a ``final/``):
    the first that is not valid JSON or not a readable safetensors file is refused by name."""
    for path in sorted(Path(folder).iterdir()):
        if path.suffix == ".json":
            read_json_file(path, fix)
        elif path.suffix == ".safetensors":
            check_safetensors_file(path, fix)


@contextlib.contextmanager
def loading_checkpoint(path: str | Path, fix: str, problem: str = "cannot be loaded") -> Iterator[None]:
    """Turn any error of loading the checkpoint ``path`` (a file or a ``final/`` folder) into one
    :class:`LdpmInputError` naming it (``"<path>: <problem> (<reason>)"``);
    :class:`LdpmInputError` and ``PermissionError`` pass."""
    try:
        yield
    except (LdpmInputError, PermissionError):
        raise
    except Exception as e:  # noqa: BLE001 - truncated or junk files, foreign pickles, misfit state dicts
        raise LdpmInputError(path, f"{problem} ({error_reason(e)})", fix) from e


def load_sd_component(cls: type[T], sd_path: str | Path, subfolder: str) -> T:
    """``cls.from_pretrained(sd_path, subfolder=...)`` from local files, with a clear error."""
    path = Path(sd_path)
    if not (path / subfolder / "config.json").is_file():
        raise LdpmInputError(path, f"has no {subfolder}/config.json",
                             "pass a local Stable Diffusion 2-1-base folder (diffusers layout)")
    fix = "pass an intact local Stable Diffusion 2-1-base folder (diffusers layout)"
    read_json_file(path / subfolder / "config.json", fix)
    with loading_checkpoint(path / subfolder, fix):
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
    except PermissionError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise LdpmInputError(path, f"not a readable torch checkpoint ({error_reason(e)})",
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
