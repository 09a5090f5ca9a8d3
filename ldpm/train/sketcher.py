"""Stage 1: the Sketcher's repair model R, ``L1(R(x_u), x)`` (paper: lr 1e-4, bs 8, 30 epochs).

Besides its preset's keys the stage takes ``loader`` (``memory``: the whole split in one
tensor, batches drawn with replacement; ``stream``: batches streamed from the slice stores,
:class:`ldpm.data.dataset.SliceStream`, built by :func:`ldpm.train.stages.run_stage`),
``loader_workers``, ``grad_accum`` (a step's batch in that many micro-batches, gradients
accumulated, :func:`ldpm.train.loop.accumulate`) and ``amp`` (``bf16``: autocast on CUDA,
:func:`ldpm.train.runtime.autocast`); unset, a step is one batch in float32.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import save_file

from ..checkpoints import load_sketcher
from ..models import Sketcher, SwinIR
from ..data.dataset import SliceStream
from .loop import (accumulate, crop_pair, make_batch, random_batch, resolve_n_steps, scheduled_lr,
                   set_lr, stage_masks, step_settings, train)
from .presets import DEFAULT_CONFIG
from .runtime import Runtime, autocast

STAGE = "sketcher"


def sketcher_loss(model: Sketcher, x: torch.Tensor, masks: tuple[int, float], seed: int, step: int,
                  crop: int | None = None, gen: torch.Generator | None = None,
                  first: int = 0) -> torch.Tensor:
    """``||R(x_u) - x||_1`` (mean) on whole images ``x`` undersampled with the test geometry
    (masks ``(acceleration, center_fraction)`` seeded ``(seed, step, first + i)``), both
    divided by ``max |x_u|``, then (``crop``) the same random window of ``x_u`` and ``x``."""
    batch = make_batch(x, *masks, seed, step, first)
    if crop:
        batch = crop_pair(batch, int(crop), gen)
    return (model.repair(batch["x_u"]) - batch["target"]).abs().mean()


def train_sketcher(images: torch.Tensor | SliceStream, cfg: Mapping[str, Any] | None,
                   ckpt_dir: str | Path, seed: int = 0, n_steps: int | None = None,
                   log: bool = True, stop_after: int | None = None,
                   runtime: Runtime | None = None) -> Sketcher:
    """Train R on ``images`` [N, 1, H, W] (or a :class:`SliceStream` of them); writes
    ``ckpt_dir/final/{config.json, model.safetensors}`` and returns the trained
    :class:`Sketcher`."""
    cfg = {**DEFAULT_CONFIG[STAGE], **(cfg or {})}
    rt = runtime or Runtime()
    n_steps = resolve_n_steps(cfg, len(images), n_steps)
    accum, micro, amp = step_settings(cfg, rt, STAGE)  # amp refused here, before training
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Sketcher(SwinIR(cfg["model"])).to(rt.device)
    images = images.to(rt.device)
    opt = torch.optim.Adam(model.parameters(), lr=float(cfg["lr"]))
    replicas = rt.replicate(model)

    def micro_loss(step: int, j: int, gen: torch.Generator) -> torch.Tensor:
        x = random_batch(images, micro, None, gen, cfg.get("augment"))
        with autocast(amp, rt.device):
            return sketcher_loss(model, x, stage_masks(cfg), seed, step, cfg["crop"], gen,
                                 first=j * micro)

    def step_fn(step: int, gen: torch.Generator) -> dict[str, float]:
        set_lr(opt, scheduled_lr(cfg, step, n_steps))
        opt.zero_grad(set_to_none=True)
        loss = accumulate(lambda j, g: micro_loss(step, j, g), accum, gen, replicas)
        opt.step()
        return {"loss": loss}

    def save_final(d: Path) -> None:
        (d / "config.json").write_text(json.dumps(model.repair.config, indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in model.repair.state_dict().items()},
                  d / "model.safetensors")

    meta = train(step_fn, {"model": model}, {"opt": opt}, ckpt_dir, n_steps, seed, save_final,
                 log=log, stage=STAGE, config=cfg, stop_after=stop_after, runtime=rt,
                 loader=images if isinstance(images, SliceStream) else None)
    return load_sketcher(ckpt_dir) if meta["steps_done"] == n_steps else model.eval()
