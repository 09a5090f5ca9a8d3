"""Seconds per slice of every reconstruction method, measured in one process on one slice.

    python benchmarks/bench_methods.py [--size 128] [--repeats 3] [--device cpu|cuda] [--preset default]
        [--batch-sizes 1 4 8] [--profile] [--score-mri-steps K] [--ldpm-steps K]

The paper's cost claim at its own settings (320 x 320, the paper preset's networks, Score-MRI at
N = 2000, LDPM at the paper preset's DSS steps), in one command on a CPU:

    python benchmarks/bench_methods.py --preset paper --size 320 --repeats 1 --score-mri-steps 10 \
        --ldpm-steps 2 --baselines score_mri

Reference: LDPM's Dual-Stage Sampler. Printed: median seconds per slice of each method, the
ratio to one plain respaced-DDPM run of the same LDPM networks (the w/o DSS path), the ratio of
Score-MRI's time to LDPM's (the paper's claim: latent diffusion is cheaper than pixel-space
diffusion), and peak memory. Networks are built at the preset's sizes with seeded random
weights: time per slice does not depend on the weights' values, so nothing is trained here.

``--score-mri-steps K``: Score-MRI timed over K of its N levels (each level costs the same) and
extrapolated linearly. ``--ldpm-steps K``: LDPM's two samplers timed over K steps of each kind
and extrapolated to the preset's steps: a DSS step costs one denoiser + control branch call and,
for t > p, a VAE decode and encode (eq. 9), for t <= p a decode and its backward (eq. 10-11), so
``T(n) = n1 s1 + n2 s2 + d`` with ``n1``/``n2`` the preset schedule's steps above / below p, ``s1``
and ``s2`` measured on K steps of each kind and ``d`` (the final decode) on none; the plain
sampler's steps all cost the same.

``--batch-sizes``: LDPM's seconds per slice when B slices are sampled at once (each with its own
seeded noise), and the ratio to B = 1. ``--profile``: one DSS reconstruction split into the
denoiser + control branch, VAE decode, VAE encode (eq. 9 steps) and the decoder's backward
(eq. 10-11 steps), each with its number of calls.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from functools import partial

os.environ.setdefault("TQDM_DISABLE", "1")  # the methods' per-slice progress bars: noise here

import numpy as np  # noqa: E402
import torch

from ldpm.methods import BASELINES, measure
from ldpm.mri import ifft2c, mask_for_slice
from ldpm.models import MRControlNet, Sketcher, SwinIR, build_denoiser, build_vae, null_text_embedding
from ldpm.models import vae_decode, vae_encode
from ldpm.sampling.dual_stage import DualStageSampler
from ldpm.sampling.spaced import SpacedSchedule
from ldpm.train import presets
from ldpm.checkpoints import build_baseline
from ldpm.methods.baselines import reconstruct
from ldpm.methods.ldpm import sampler_settings
from ldpm.train.baselines import DEFAULT_CONFIGS, PAPER_CONFIGS


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def subschedule(schedule: SpacedSchedule, steps) -> SpacedSchedule:
    """The schedule's steps at indices ``steps`` only (for timing a few steps of each kind)."""
    idx = torch.as_tensor(sorted(steps), dtype=torch.long)
    return SpacedSchedule(schedule.timesteps[idx], schedule.alphas_cumprod[idx],
                          schedule.alphas_cumprod_prev[idx], schedule.betas[idx],
                          schedule.posterior_variance[idx], schedule.num_train_timesteps)


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
    ap.add_argument("--batch-sizes", type=int, nargs="*", default=[],
                    help="also time LDPM with these many slices sampled at once")
    ap.add_argument("--profile", action="store_true", help="split one DSS reconstruction by part")
    ap.add_argument("--score-mri-steps", type=int, default=None,
                    help="time Score-MRI over this many of its N predictor-corrector levels and "
                         "extrapolate linearly to N (each level costs the same)")
    ap.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=BASELINES,
                    help="the baselines to time (the paper's cost claim needs only score_mri)")
    ap.add_argument("--ldpm-steps", type=int, default=None,
                    help="time LDPM's samplers over this many steps of each kind (t > p, t <= p) "
                         "and extrapolate to the preset's steps")
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
    import yaml

    from ldpm.config import CONFIG_FILE, deep_merge, load_config

    preset = ({} if a.preset == "default" else
              yaml.safe_load((CONFIG_FILE.parent / "presets" / "paper.yaml").read_text()))
    run_cfg = load_config(CONFIG_FILE, deep_merge(preset, {"pretrained": {"vae_without_vgg": True}}),
                          check_paths=False)
    # the sampler's one source: the config's inference.ldpm (--steps: another step count)
    settings = sampler_settings(run_cfg["inference"]["ldpm"])
    n_steps = settings["n_steps"] = a.steps or settings["n_steps"]

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

    def ldpm(use_dss: bool, steps=None) -> None:
        """One reconstruction; ``steps``: only these indices of the preset's schedule."""
        sampler = DualStageSampler(**settings, use_dss=use_dss)
        if steps is not None:
            sampler.schedule = subschedule(sampler.schedule, steps)
        with torch.no_grad():
            c_latent = enc(sketcher(x_u, k, m))
        sampler(mrcn, enc, dec, c_latent, k, m, generator=torch.Generator().manual_seed(0))

    def ldpm_seconds(use_dss: bool) -> float:
        """Seconds of one reconstruction at the preset's steps, measured or extrapolated."""
        if not a.ldpm_steps or a.ldpm_steps >= n_steps:
            return timed(partial(ldpm, use_dss), a.repeats, a.device)
        preset_sampler = DualStageSampler(**settings)
        full, p = preset_sampler.schedule, preset_sampler.p
        above = [i for i in range(len(full)) if int(full.timesteps[i]) > p]
        below = [i for i in range(len(full)) if int(full.timesteps[i]) <= p]
        d = timed(partial(ldpm, use_dss, []), a.repeats, a.device)
        total = d
        for kind in ((above, below) if use_dss else (above + below,)):
            if kind:
                part = kind[:a.ldpm_steps]
                per_step = (timed(partial(ldpm, use_dss, part), a.repeats, a.device) - d) / len(part)
                total += per_step * len(kind)
        return total

    def ldpm_batch(b: int, eps_fn=mrcn, encode=enc, decode=dec) -> None:
        """One DSS reconstruction of ``b`` slices at once; the sampler calls ``eps_fn``,
        ``encode`` and ``decode`` (the condition is encoded by ``enc``)."""
        kb, mb, xb = (t.expand(b, *t.shape[1:]) for t in (k, m, x_u))
        sampler = DualStageSampler(**settings)
        with torch.no_grad():
            c_latent = enc(sketcher(xb, kb, mb))
        sampler(eps_fn, encode, decode, c_latent, kb, mb,
                generator=[torch.Generator().manual_seed(i) for i in range(b)])

    def profile_dss(b: int = 1) -> dict[str, tuple[float, int]]:
        """Seconds and calls of each part of one DSS reconstruction of ``b`` slices at once (wall
        clock, synchronised)."""
        import ldpm.sampling.dual_stage as ds

        clock = {"denoiser + control branch": [0.0, 0], "VAE decode (forward)": [0.0, 0],
                 "VAE encode (eq. 9)": [0.0, 0], "decoder backward (eq. 10-11)": [0.0, 0]}

        def sync() -> None:
            if a.device == "cuda":
                torch.cuda.synchronize()

        def clocked(name, fn):
            def run(*args, **kw):
                sync()
                t0 = time.perf_counter()
                out = fn(*args, **kw)
                sync()
                clock[name][0] += time.perf_counter() - t0
                clock[name][1] += 1
                return out
            return run

        real_guidance = ds.kspace_guidance

        def guidance(z0, k_u, mask, vae_decode, g):
            before = clock["VAE decode (forward)"][0]
            sync()
            t0 = time.perf_counter()
            out = real_guidance(z0, k_u, mask, vae_decode, g)
            sync()
            decode_part = clock["VAE decode (forward)"][0] - before
            clock["decoder backward (eq. 10-11)"][0] += time.perf_counter() - t0 - decode_part
            clock["decoder backward (eq. 10-11)"][1] += 1
            return out

        ds.kspace_guidance = guidance
        try:
            ldpm_batch(b, clocked("denoiser + control branch", mrcn),
                       clocked("VAE encode (eq. 9)", enc), clocked("VAE decode (forward)", dec))
        finally:
            ds.kspace_guidance = real_guidance
        return {name: (sec, calls) for name, (sec, calls) in clock.items()}

    rows: dict[str, float] = {}

    def measured(name: str, sec: float) -> None:
        rows[name] = sec
        print(f"measured {name}: {sec:.3f} s/slice", flush=True)  # a long run leaves its partial results

    measured("LDPM (DSS)", ldpm_seconds(True))
    measured("plain spaced DDPM (same nets)", ldpm_seconds(False))
    configs = DEFAULT_CONFIGS if a.preset == "default" else PAPER_CONFIGS
    n_score = int(configs["score_mri"]["sampler"]["n_steps"])  # the preset's N
    k_score = min(a.score_mri_steps or n_score, n_score)
    for name in a.baselines:
        cfg = configs[name]
        if name == "score_mri":  # one draw, as LDPM's rows time one draw
            cfg = {**cfg, "sampler": {**cfg["sampler"], "n_steps": k_score, "n_samples": 1}}
        model = build_baseline(name, cfg).to(dev).eval()
        sec = timed(lambda: reconstruct(name, model, cfg, k_np, mask, {"seed": 0}),
                    a.repeats, "cpu")  # baselines' reconstruct runs on the CPU tensors
        measured(name, sec * (n_score / k_score if name == "score_mri" else 1.0))
    ref = rows["LDPM (DSS)"]
    print(f"device: {a.device} ({torch.cuda.get_device_name() if a.device == 'cuda' else 'CPU'}), "
          f"torch threads: {torch.get_num_threads()}, slice {a.size}x{a.size}, "
          f"preset {a.preset}, DSS steps {n_steps}, median of {a.repeats}")
    print(f"{'method':32s} {'s/slice':>10s} {'ratio to LDPM':>14s}")
    for name, sec in rows.items():
        print(f"{name:32s} {sec:10.3f} {sec / ref:14.2f}")
    print(f"DSS / plain spaced DDPM: {ref / rows['plain spaced DDPM (same nets)']:.2f}")
    score_note = "" if k_score == n_score else f", timed over {k_score} levels and extrapolated linearly"
    ldpm_note = ("" if not a.ldpm_steps or a.ldpm_steps >= n_steps else
                 f", timed over {a.ldpm_steps} steps of each kind and extrapolated")
    if "score_mri" in rows:
        print(f"Score-MRI / LDPM: {rows['score_mri'] / ref:.2f} (Score-MRI at N={n_score}{score_note}; "
              f"LDPM at {n_steps} DSS steps{ldpm_note})")
    if a.batch_sizes:
        per_slice = {b: timed(partial(ldpm_batch, b), a.repeats, a.device) / b for b in a.batch_sizes}
        base = per_slice.get(1) or per_slice[min(per_slice)]
        print(f"{'LDPM, B slices at once':32s} {'s/slice':>10s} {'speed-up':>14s}")
        for b, sec in per_slice.items():
            print(f"{'B = ' + str(b):32s} {sec:10.3f} {base / sec:14.2f}")
    if a.profile:
        parts = profile_dss()
        total = sum(sec for sec, _ in parts.values())
        print(f"{'one DSS reconstruction':32s} {'s':>10s} {'calls':>6s} {'share':>7s}")
        for name, (sec, calls) in parts.items():
            print(f"{name:32s} {sec:10.3f} {calls:6d} {sec / total:7.1%}")
        batched = [b for b in a.batch_sizes if b > 1]
        if batched:  # which part gains from sampling B slices at once
            per_b = {b: profile_dss(b) for b in batched}
            print(f"{'s/slice by part':32s} {'B = 1':>8s} " + " ".join(
                f"{'B = ' + str(b):>8s} {'gain':>5s}" for b in batched))
            for name, (sec, _) in parts.items():
                cells = " ".join(f"{per_b[b][name][0] / b:8.3f} {sec * b / per_b[b][name][0]:5.2f}"
                                 for b in batched)
                print(f"{name:32s} {sec:8.3f} {cells}")
    print(f"peak memory: {peak_memory_mb(a.device):.0f} MiB ({'GPU' if a.device == 'cuda' else 'RSS'})")


if __name__ == "__main__":
    main()
