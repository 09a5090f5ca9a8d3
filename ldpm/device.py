"""The torch device a job runs on."""

from __future__ import annotations

import torch

from .errors import LdpmInputError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: ``cuda:local_rank`` if a GPU is visible, else CPU; ``cuda`` without one is refused."""
    if device not in DEVICES:
        raise LdpmInputError(f"device {device!r}", "unknown device", f"use one of: {', '.join(DEVICES)}")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise LdpmInputError("device 'cuda'", "no GPU is visible to this process",
                             "use --device auto or cpu, or run on a GPU node")
    return torch.device("cuda", local_rank % torch.cuda.device_count())
