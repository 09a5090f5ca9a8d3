"""Run under torchrun (2 ranks, Gloo, CPU) by tests/test_distributed.py; writes OUT/rank<r>.json.

1. First-step gradients: the gradient ``DistributedDataParallel`` leaves after
   :func:`ldpm.train.loop.accumulate` (through :meth:`Runtime.replicate`) against the mean over
   the ranks of the same gradient computed on each rank without it (all-gathered), for the
   Sketcher's loss (one and two micro-batches) and MR-VAE's generator loss with the GAN term on
   (``torch.autograd.grad`` of the decoder's last layer inside the wrapped forward).
2. Stages: the ``vae`` stage with its discriminator from step 1 and two micro-batches, and the
   ``score_mri`` baseline with gradient clipping and an EMA; each rank records a hash of its
   own modules' parameters (what ``train`` held, not the ``final/`` rank 0 wrote).
3. Resume: a Sketcher run with two micro-batches stopped after one step and resumed to three
   against an uninterrupted three-step run (``final/`` weights, compared on rank 0).
"""

import copy
import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import ldpm.train.baselines as baselines_mod
import ldpm.train.vae as vae_mod
from ldpm.models import PatchDiscriminator, Sketcher, SwinIR, VGGPerceptual, build_vae
from safetensors.torch import load_file

from ldpm.train import train_sketcher
from ldpm.train.loop import accumulate, make_batch, random_batch
from ldpm.train.runtime import current_runtime
from ldpm.train.sketcher import sketcher_loss
from ldpm.train.vae import vae_losses

out = Path(sys.argv[1])
torch.set_num_threads(1)
rt = current_runtime("cpu")
SEED, MASKS = 1, (4, 0.08)
TINY_SWIN = {"embed_dim": 8, "depths": [1], "num_heads": [2], "window_size": 8}
TINY_VAE = {"block_out_channels": [8, 8, 8, 8], "norm_num_groups": 4}
images = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(0))
result: dict = {"world": rt.world_size}


def flat_grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in model.parameters() if p.requires_grad])


def compare(model: torch.nn.Module, loss_of, accum: int) -> dict:
    """DDP's gradient of ``loss_of`` against the mean of the per-rank plain gradients."""
    plain = copy.deepcopy(model)
    accumulate(lambda j, g: loss_of(plain, j, g), accum, rt.generator(SEED, 0))
    replicas = rt.replicate(model)
    accumulate(lambda j, g: loss_of(model, j, g), accum, rt.generator(SEED, 0), replicas)
    local, averaged = flat_grads(plain), flat_grads(model)
    gathered = [torch.empty_like(local) for _ in range(rt.world_size)]
    dist.all_gather(gathered, local)
    mean = torch.stack(gathered).mean(0)
    return {"max_diff": float((averaged - mean).abs().max()), "scale": float(mean.abs().max()),
            "ranks_differ": float((gathered[0] - gathered[1]).abs().max()),
            "local_is_not_mean": float((local - mean).abs().max())}


# 1a. the Sketcher's loss, batch 4 over 2 ranks, one or two micro-batches per rank
for accum in (1, 2):
    micro = 4 // rt.world_size // accum
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        sketcher = Sketcher(SwinIR(TINY_SWIN))

    def sketcher_micro(model, j, g, micro=micro):
        x = random_batch(images, micro, None, g)
        return sketcher_loss(model, x, MASKS, SEED, 0, None, g, first=j * micro)

    result[f"sketcher_accum{accum}"] = compare(sketcher, sketcher_micro, accum)

# 1b. MR-VAE's generator loss with the adaptive GAN weight, two micro-batches per rank
with torch.random.fork_rng():
    torch.manual_seed(SEED)
    vae = build_vae(TINY_VAE)
    disc = PatchDiscriminator(3, ndf=8, n_layers=1)
vgg, w = VGGPerceptual(None), {"mu": 1.0, "nu": 0.2, "omega": 1e-6, "lambda": 0.65}


def vae_micro(model, j, g):
    x = make_batch(random_batch(images, 1, None, g), *MASKS, SEED, 0, first=j)["target"]
    return vae_losses(model, disc, vgg, x, g, w, use_gan=True)["loss"]


result["vae_gan_accum2"] = compare(vae, vae_micro, 2)

# 2. two stages trained data-parallel; each rank hashes the parameters it trained
held: dict[str, dict] = {}


def recording(real_train, stage):
    def wrapped(step_fn, modules, *args, **kwargs):
        meta = real_train(step_fn, modules, *args, **kwargs)
        for name, m in modules.items():
            h = hashlib.sha256()
            for k, p in sorted(m.named_parameters()):
                h.update(k.encode() + p.detach().contiguous().numpy().tobytes())
            held.setdefault(stage, {})[name] = h.hexdigest()
        return meta
    return wrapped


vae_mod.train = recording(vae_mod.train, "vae")
baselines_mod.train = recording(baselines_mod.train, "score_mri")
vae_cfg = {"lr_schedule": "constant", "warmup": 0, "model": TINY_VAE, "lr": 3e-3,
           "disc_lr": 1e-3, "batch_size": 4, "crop": 32, "ckpt_every": 2,
           "disc": {"ndf": 8, "n_layers": 1}, "disc_start": 1, "grad_accum": 2,
           "masks": {"acceleration": 4, "center_fraction": 0.08}}
vae_mod.train_vae(images, vae_cfg, out / "vae", seed=SEED, n_steps=3, log=False, runtime=rt)
score_cfg = {"model": {"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
                       "add_attention": False},
             "crop": 16, "batch_size": 4, "ckpt_every": 1, "grad_clip": 1.0, "ema": 0.9}
baselines_mod.train_baseline("score_mri", images, score_cfg, out / "score_mri", seed=SEED,
                             n_steps=2, log=False, runtime=rt)
result["held"] = held

# 3. an interrupted and resumed data-parallel run ends where an uninterrupted one does
sk_cfg = {"model": TINY_SWIN, "lr": 3e-3, "batch_size": 4, "crop": 16, "ckpt_every": 1,
          "grad_accum": 2, "lr_schedule": "constant", "warmup": 0}
train_sketcher(images, sk_cfg, out / "sk_full", seed=SEED, n_steps=3, log=False, runtime=rt)
train_sketcher(images, sk_cfg, out / "sk_part", seed=SEED, n_steps=3, log=False, runtime=rt,
               stop_after=1)
train_sketcher(images, sk_cfg, out / "sk_part", seed=SEED, n_steps=3, log=False, runtime=rt)
if rt.is_main:
    full, part = (load_file(out / d / "final" / "model.safetensors") for d in ("sk_full", "sk_part"))
    result["resume_equal"] = full.keys() == part.keys() and all(
        torch.equal(full[k], part[k]) for k in full)
(out / f"rank{rt.rank}.json").write_text(json.dumps(result))
