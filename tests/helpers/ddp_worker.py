"""Run under torchrun (2 ranks, Gloo, CPU) by tests/test_distributed.py; writes OUT/rank<r>.json."""

import json
import sys
from pathlib import Path

import torch

from ldpm.models import Sketcher, SwinIR
from ldpm.train import train_sketcher
from ldpm.train.runtime import current_runtime

out = Path(sys.argv[1])
torch.set_num_threads(1)
rt = current_runtime("cpu")
r = rt.rank

# gradient averaging by DistributedDataParallel (Runtime.replicate): rank r's gradient of `a`
# is r + 1; `b` has a gradient on rank 0 only; `c` on no rank
held = torch.nn.ParameterList(torch.nn.Parameter(torch.zeros(3)) for _ in range(3))
a, b, c = held


def loss_fn():
    return (a * (r + 1)).sum() + (b.sum() if r == 0 else 0.0)


replicas = rt.replicate(held)  # kept alive until the backward pass: DDP holds a weakref
replicas(loss_fn).backward()

# a few data-parallel training steps of a tiny Sketcher
g = torch.Generator().manual_seed(0)
images = torch.rand(6, 1, 16, 16, generator=g)
cfg = {"model": {"embed_dim": 8, "depths": [1], "num_heads": [2], "window_size": 8}, "lr": 3e-3,
       "batch_size": 4, "crop": 16, "ckpt_every": 2, "acceleration": 4, "center_fraction": 0.08}
model = train_sketcher(images, cfg, out / "sketcher", seed=1, n_steps=3, log=False, runtime=rt)
flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
(out / f"rank{r}.json").write_text(json.dumps({
    "a": a.grad.tolist(), "b": b.grad.tolist(), "c_is_none": c.grad is None,
    "params_sum": float(flat.double().sum()), "params_abs": float(flat.double().abs().sum()),
    "world": rt.world_size}))
