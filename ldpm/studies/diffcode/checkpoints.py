"""A trained DiffCode stage read back from its ``final/`` folder (``config.json``, the stage
config, and ``model.safetensors``, as :func:`ldpm.studies.diffcode.train.save_stage` writes
them), and the frozen prior of stages I + II: what training's later stages and the evaluation
both load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import load_file
from torch import nn

from ...checkpoints import final_fix, read_final
from ...errors import LdpmInputError
from ...models.pretrained import loading_checkpoint
from .models import Generators, LatentRetrieval, Restorer, VQAutoencoder, pad_to_multiple


def build_modules(cfg: Mapping) -> dict[str, nn.Module]:
    """The trainable networks of one stage config, freshly initialised."""
    from ...models.swinir import SwinIR
    from ...models.unet import UnetRecon

    kind, n_tasks = cfg["kind"], len(cfg["tasks"])
    if kind == "bank":
        return {"vq": VQAutoencoder(cfg["model"], n_tasks if cfg["codebook"] == "bank" else 1)}
    if kind == "retrieval":
        return {"retrieval": LatentRetrieval(cfg["model"], cfg["mode"])}
    if kind == "restore":
        v = cfg["variant"]
        return {"restorer": Restorer(cfg["model"], n_tasks, v["prior"] is not None, v["tars"], v["top_k"])}
    if kind == "unet":
        return {"model": UnetRecon(cfg["model"])}
    return {"model": SwinIR({**cfg["model"], "in_channels": 1, "out_channels": 1})}


def load_stage(folder: str | Path, device: torch.device | str = "cpu",
               expect: str | None = None) -> tuple[dict, dict[str, nn.Module]]:
    """``(config, modules)`` of a trained stage (its training folder or ``final/``), frozen."""
    final, cfg = read_final(folder, "DiffCode stage", "run `ldpm diffcode-train` for it first")
    if expect is not None and cfg.get("stage") != expect:
        raise LdpmInputError(final, f"holds stage {cfg.get('stage')!r}, not {expect!r}",
                             f"pass the diffcode_{expect} training folder")
    with loading_checkpoint(final, final_fix(final)):
        modules = build_modules(cfg)
        state = load_file(final / "model.safetensors")
        for name, m in modules.items():
            m.load_state_dict({k[len(name) + 1:]: v for k, v in state.items()
                               if k.startswith(f"{name}.")})
    for m in modules.values():
        m.to(device).requires_grad_(False).eval()
    return cfg, modules


class PriorReference(nn.Module):
    """Stages I + II frozen: LQ -> ``ẑ`` (retrieval) -> RQ with the task's codebook -> ``I_ref``."""

    def __init__(self, bank_cfg: Mapping, vq: VQAutoencoder, retrieval: LatentRetrieval):
        super().__init__()
        self.tasks, self.single = list(bank_cfg["tasks"]), bank_cfg["codebook"] != "bank"
        self.vq, self.retrieval = vq, retrieval

    def codebook_index(self, task_idx: torch.Tensor) -> torch.Tensor:
        """The codebook of each sample's task (the bank), or codebook 0 (the single codebook)."""
        return torch.zeros_like(task_idx) if self.single else task_idx

    @torch.no_grad()
    def forward(self, lq: torch.Tensor, task_idx: torch.Tensor, generators: Generators) -> torch.Tensor:
        x, (h, w) = pad_to_multiple(lq, self.vq.factor)
        z_hat = self.retrieval(x, generators)
        return self.vq.reference(z_hat, self.codebook_index(task_idx))[..., :h, :w]
