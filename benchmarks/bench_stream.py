"""Training from memory against training from streamed slice stores (``loader: stream``).

    python benchmarks/bench_stream.py [--stage sketcher] [--slices 5000] [--per-volume 16]
        [--size 320] [--steps 40] [--repeats 1] [--workers 0] [--threads 1] [--dir /tmp]

Writes ``--slices`` synthetic ``size x size`` slices into slice stores of ``--per-volume``
slices each (the format of :func:`ldpm.data.store.preprocess_volume`) and their manifest (all
in the train split) in a temporary folder, then trains ``--stage`` (the Sketcher, MR-VAE, the
denoiser on the latents of a config-built VAE, or a trained baseline) at the default preset's
sizes for ``--steps`` steps, each run in its own process: (a) ``loader: memory``, the whole
split in one tensor (:func:`ldpm.train.stages.training_images`), (b) ``loader: stream``
(:func:`ldpm.train.stages.training_stream`, ``--workers`` DataLoader workers), alternated
``--repeats`` times. Printed per run: the peak resident memory of the process (and of its
largest DataLoader worker), the median and mean seconds per training step (every step timed,
the split's loading and what the stage computes before its first step excluded) and the
seconds from the start to the end of the first step (loading, model, and the denoiser's
latents included); then stream / memory ratios of the largest peak and of the median of the
runs' median step times (targets: peak memory under 2 GiB, median step time within 10%). The
VAE's final save (its latent scale over every image) and the denoiser's latents read the split
once in chunks, so they count in the peak but not in the step times.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np


def write_stores(folder: Path, n_slices: int, per_volume: int, size: int) -> Path:
    """Slice stores of smooth random 'anatomy' and their manifest; returns the manifest."""
    from ldpm.data.store import build_manifest

    yy, xx = np.meshgrid(np.linspace(-1, 1, size, dtype=np.float32),
                         np.linspace(-1, 1, size, dtype=np.float32), indexing="ij")
    head = ((xx ** 2 + yy ** 2) < 0.8).astype(np.float32)
    rng = np.random.default_rng(0)
    stores = []
    for v in range(math.ceil(n_slices / per_volume)):
        n = min(per_volume, n_slices - v * per_volume)
        targets = np.empty((n, size, size), np.float32)
        for s in range(n):
            cx, cy, w = rng.uniform(-0.5, 0.5, 3)
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (0.05 + 0.2 * abs(w)))
            targets[s] = head * (0.3 + blob) * 1e-4
        path = folder / f"vol{v:05d}.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("target", data=targets)
            f.create_dataset("slice_index", data=np.arange(n, dtype=np.int64))
            attrs = {"volume": f"vol{v:05d}", "source_file": f"vol{v:05d}_raw.h5",
                     "anatomy": "brain", "contrast": "T2", "field_strength": 3.0,
                     "subject": f"s{v:05d}", "crop_width": size,
                     "volume_max": float(targets.max())}
            f.attrs.update(attrs)
        stores.append(path)
    manifest = folder / "manifest.csv"
    build_manifest(stores, manifest, {"train": 1.0, "val": 0.0, "test": 0.0}, seed=0)
    return manifest


def peak_mib(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident memory (MiB) of this process, or (``RUSAGE_CHILDREN``) of its largest
    finished child."""
    return resource.getrusage(who).ru_maxrss / 1024


#: the stages --stage takes besides the trained baselines (ldpm.baselines)
LDPM_STAGES = ("sketcher", "vae", "denoiser")


def train_stage(stage: str, images, cfg: dict, out: Path, rt):
    """Train ``stage`` as ``ldpm train`` would (the denoiser on a config-built VAE); returns
    the module whose ``train`` runs the steps."""
    if stage == "sketcher":
        import ldpm.train.sketcher as module

        return module, lambda: module.train_sketcher(images, cfg, out, seed=0, log=False,
                                                     runtime=rt)
    if stage == "vae":
        import ldpm.train.vae as module

        return module, lambda: module.train_vae(images, cfg, out, seed=0, log=False, runtime=rt)
    if stage == "denoiser":
        import torch

        import ldpm.train.denoiser as module
        from ldpm.models import build_vae
        from ldpm.train.presets import DEFAULT_CONFIG

        torch.manual_seed(0)
        vae = build_vae(DEFAULT_CONFIG["vae"]["model"])
        return module, lambda: module.train_denoiser(images, cfg, out, vae, seed=0, log=False,
                                                     runtime=rt)
    import ldpm.train.baselines as module

    return module, lambda: module.train_baseline(stage, images, cfg, out, seed=0, log=False,
                                                 runtime=rt)


def child(stage: str, mode: str, manifest: Path, out: Path, steps: int, workers: int,
          threads: int) -> None:
    """Train ``stage`` for ``steps`` steps reading ``manifest`` from ``mode``; print JSON."""
    import torch

    torch.set_num_threads(threads)
    from ldpm.train.runtime import Runtime
    from ldpm.train.stages import stage_config, training_images, training_stream

    kids_before = peak_mib(resource.RUSAGE_CHILDREN)  # importing torch runs a child
    t0 = time.perf_counter()
    overrides = {"n_steps": steps, "ckpt_every": steps, "loader": mode}
    if mode == "stream":
        overrides["loader_workers"] = workers
    cfg = stage_config(stage, overrides, "default")
    rt = Runtime()
    images = (training_stream(manifest, 0, rt, workers) if mode == "stream"
              else training_images(manifest))
    times: list[float] = []
    first_done: list[float] = []
    module, run = train_stage(stage, images, cfg, out, rt)
    train = module.train

    def timed_train(step_fn, *args, **kwargs):
        def timed(step, gen):
            t = time.perf_counter()
            out = step_fn(step, gen)
            times.append(time.perf_counter() - t)
            if not first_done:
                first_done.append(time.perf_counter() - t0)
            return out
        return train(timed, *args, **kwargs)

    module.train = timed_train
    run()
    if mode == "stream":
        images.close()  # its workers exit: their peaks are counted below
    kids = peak_mib(resource.RUSAGE_CHILDREN)
    print(json.dumps({"stage": stage, "mode": mode, "peak_mib": peak_mib(),
                      "worker_peak_mib": kids if kids > kids_before else 0.0,
                      "median_step_s": statistics.median(times),
                      "mean_step_s": statistics.fmean(times), "first_step_s": first_done[0],
                      "steps": len(times), "n_images": len(images)}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", default="sketcher",
                   help=f"the stage to train: {', '.join(LDPM_STAGES)} or a trained baseline")
    p.add_argument("--slices", type=int, default=5000, help="synthetic training slices")
    p.add_argument("--per-volume", type=int, default=16, help="slices per store file")
    p.add_argument("--size", type=int, default=320, help="slice side (pixels)")
    p.add_argument("--steps", type=int, default=40, help="training steps of each run")
    p.add_argument("--repeats", type=int, default=1, help="runs of each mode, alternated")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of the stream")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each run")
    p.add_argument("--dir", type=Path, default=None, help="where the temporary stores go")
    p.add_argument("--child", choices=["memory", "stream"], help=argparse.SUPPRESS)
    p.add_argument("--manifest", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    from ldpm.methods.graph import BASELINES

    if a.stage not in LDPM_STAGES + BASELINES:
        p.error(f"--stage {a.stage}: use one of {', '.join(LDPM_STAGES + BASELINES)}")
    if a.child:
        child(a.stage, a.child, a.manifest, a.out, a.steps, a.workers, a.threads)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench_stream.", dir=a.dir) as tmp:
        t0 = time.perf_counter()
        manifest = write_stores(Path(tmp), a.slices, a.per_volume, a.size)
        gib = a.slices * a.size * a.size * 4 / 2 ** 30
        print(f"{a.slices} slices of {a.size}x{a.size} ({gib:.2f} GiB float32) in "
              f"{math.ceil(a.slices / a.per_volume)} stores, written in "
              f"{time.perf_counter() - t0:.1f} s; {a.stage} (default preset), {a.steps} steps, "
              f"{a.threads} thread(s), stream workers {a.workers}", flush=True)
        res: dict[str, list[dict]] = {"memory": [], "stream": []}
        for i, mode in enumerate(["memory", "stream"] * a.repeats):
            cmd = [sys.executable, __file__, "--stage", a.stage, "--child", mode,
                   "--manifest", str(manifest),
                   "--out", str(Path(tmp) / f"run{i}_{mode}"), "--steps", str(a.steps),
                   "--workers", str(a.workers), "--threads", str(a.threads)]
            env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode:
                print(proc.stdout + proc.stderr, file=sys.stderr)
                return proc.returncode
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            res[mode].append(r)
            workers = f" (largest worker {r['worker_peak_mib']:.0f} MiB)" if r["worker_peak_mib"] else ""
            print(f"{mode:6s}: peak {r['peak_mib']:8.0f} MiB{workers}, step "
                  f"{r['median_step_s']:.4f} s median / {r['mean_step_s']:.4f} s mean, first "
                  f"step after {r['first_step_s']:.1f} s", flush=True)
        peak = {k: max(max(r["peak_mib"], r["worker_peak_mib"]) for r in v) for k, v in res.items()}
        step = {k: statistics.median(r["median_step_s"] for r in v) for k, v in res.items()}
        mean = {k: statistics.median(r["mean_step_s"] for r in v) for k, v in res.items()}
        step_ratio = step["stream"] / step["memory"]
        print(f"stream / memory: peak memory {peak['stream'] / peak['memory']:.3f}x "
              f"({peak['stream']:.0f} vs {peak['memory']:.0f} MiB; target stream < 2048 MiB: "
              f"{'met' if peak['stream'] < 2048 else 'NOT met'}), median step time "
              f"{step_ratio:.3f}x ({step['stream']:.4f} vs {step['memory']:.4f} s; target "
              f"<= 1.10x: {'met' if step_ratio <= 1.10 else 'NOT met'}), mean step time "
              f"{mean['stream'] / mean['memory']:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
