"""Seconds per slice of every reconstruction method, measured in one process on one slice.

    python benchmarks/bench_methods.py [--size 128] [--repeats 3] [--device cpu|cuda] [--preset default]

Reference: LDPM's Dual-Stage Sampler. Printed: median seconds per slice of each method, the
ratio to one plain respaced-DDPM run of the same LDPM networks (the w/o DSS path), the ratio of
Score-MRI's time to LDPM's (the paper's claim: latent diffusion is cheaper than pixel-space
diffusion), and peak memory. Networks are built at the preset's sizes with seeded random
weights: time per slice does not depend on the weights' values, so nothing is trained here.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from functools import partial

import numpy as np
import torch

from ldpm.methods import measure
from ldpm.mri import ifft2c, mask_for_slice
from ldpm.models import MRControlNet, Sketcher, SwinIR, build_denoiser, build_vae, null_text_embedding
from ldpm.models import vae_decode, vae_encode
from ldpm.sampling.dual_stage import DualStageSampler
from ldpm.train import presets
from ldpm.train.baselines import DEFAULT_CONFIGS, PAPER_CONFIGS, build_model, reconstruct


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def timed(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", choices=["default", "paper"], default="default")
    ap.add_argument("--steps", type=int, default=None, help="DSS steps (default: the preset's)")
    a = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.device(a.device)
    stage = presets.DEFAULT_CONFIG if a.preset == "default" else presets.PAPER_CONFIG
    if a.preset == "paper" and stage["vae"]["model"] is None:
        stage = {**stage, "vae": {**stage["vae"], "model": {"block_out_channels": [128, 256, 512, 512],
                                                            "layers_per_block": 2, "norm_num_groups": 32}},
                 "denoiser": {**stage["denoiser"], "model": {
                     "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
                     "cross_attention_dim": 1024, "attention_head_dim": 64, "norm_num_groups": 32,
                     "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                     "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}}}
    from ldpm.config import REPO_ROOT, load_config

    run_cfg = load_config(REPO_ROOT / "config" / ("config.yaml" if a.preset == "default"
                                                  else "presets/paper.yaml"),
                          {"pretrained": {"vae_without_vgg": True}})
    n_steps = a.steps or run_cfg["inference"]["ldpm"]["n_steps"]  # the sampler's one source

    x = np.random.default_rng(0).random((1, a.size, a.size)).astype(np.float32)
    mask = mask_for_slice("bench", 0, a.size, 8)[None]
    k_np = measure(x, mask)
    k = torch.from_numpy(k_np).to(dev)[:, None]
    m = torch.from_numpy(mask).to(dev)[:, None, None]
    x_u = ifft2c(k).abs()

    sketcher = Sketcher(SwinIR(stage["sketcher"]["model"])).to(dev).eval()
    vae = build_vae(stage["vae"]["model"]).to(dev).eval()
    unet = build_denoiser(stage["denoiser"]["model"]).to(dev)
    mrcn = MRControlNet.from_denoiser(unet, null_text_embedding(unet).to(dev)).to(dev).eval()
    enc, dec = partial(vae_encode, vae), partial(vae_decode, vae)

    def ldpm(use_dss: bool) -> None:
        sampler = DualStageSampler(n_steps=n_steps, use_dss=use_dss)
        with torch.no_grad():
            c_latent = enc(sketcher(x_u, k, m))
        sampler(mrcn, enc, dec, c_latent, k, m, generator=torch.Generator().manual_seed(0))

    rows = {"LDPM (DSS)": timed(partial(ldpm, True), a.repeats, a.device),
            "plain spaced DDPM (same nets)": timed(partial(ldpm, False), a.repeats, a.device)}
    configs = DEFAULT_CONFIGS if a.preset == "default" else PAPER_CONFIGS
    for name in ("unet", "varnet", "swinmr", "score_mri"):
        model = build_model(name, configs[name]).to(dev).eval()
        rows[name] = timed(lambda: reconstruct(name, model, configs[name], k_np, mask, {"seed": 0}),
                           a.repeats, "cpu")  # baselines' reconstruct runs on the CPU tensors
    ref = rows["LDPM (DSS)"]
    print(f"device: {a.device} ({torch.cuda.get_device_name() if a.device == 'cuda' else 'CPU'}), "
          f"torch threads: {torch.get_num_threads()}, slice {a.size}x{a.size}, "
          f"preset {a.preset}, DSS steps {n_steps}, median of {a.repeats}")
    print(f"{'method':32s} {'s/slice':>10s} {'ratio to LDPM':>14s}")
    for name, sec in rows.items():
        print(f"{name:32s} {sec:10.3f} {sec / ref:14.2f}")
    print(f"DSS / plain spaced DDPM: {ref / rows['plain spaced DDPM (same nets)']:.2f}")
    print(f"Score-MRI / LDPM: {rows['score_mri'] / ref:.2f} "
          f"(Score-MRI at N={configs['score_mri']['sampler']['n_steps']})")
    print(f"peak memory: {peak_memory_mb(a.device):.0f} MiB ({'GPU' if a.device == 'cuda' else 'RSS'})")


if __name__ == "__main__":
    main()
