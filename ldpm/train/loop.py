"""One generic, seeded, resumable training loop shared by every stage.

Determinism: the randomness of step ``i`` (batch indices, crops, masks, noise, timesteps) comes
only from :func:`step_generator` ``(seed, i)``, so resuming needs nothing but the weights and
optimizer states saved in ``last.pt``: a run interrupted after k steps and resumed to n gives
the same weights, bit for bit on CPU, as an uninterrupted n-step run. A stage that streams its
images (:class:`ldpm.data.dataset.SliceStream`, config ``loader: stream``) reads them in the
stream's seeded epoch order instead of drawing indices, and its position is saved in
``last.pt`` too.

Layout of ``ckpt_dir``::

    last.pt     modules + optimizers + step + log rows (+ the stream's position when streaming;
                torch.save of tensors, dicts, lists, numbers and strings only, read back with
                ``weights_only=True``), written atomically
    log.csv     step,loss,... one row per step
    meta.json   stage, config, seed, steps, notes (e.g. "VGG term off: ...")
    final/      what the next stage loads (written by the stage's ``save_final``, atomically)

Every file is written to a temporary sibling first (``.last.pt.XXXXXXXX.tmp``, ``.final.XXXXXXXX``,
``.final.old``); a run that starts or resumes removes those a crash left behind. A logged scalar
that is not finite (NaN/inf) stops the run with an error, before the step is checkpointed, so
``last.pt`` keeps the last finite state and no ``final/`` is written.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import math
import os
import re
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.dataset import SliceStream
from ..errors import LdpmInputError
from ..io import atomic_path, remove_stale_temps, umask_mode, write_text_atomic
from ..logs import warnings_once
from ..models.pretrained import loading_checkpoint
from ..mri import RandomMaskFunc, ifft2c, measurement_scale, undersample
from .runtime import Replicas, Runtime, autocast

StepFn = Callable[[int, torch.Generator], Mapping[str, float]]


def augment_images(x: torch.Tensor, augment: Mapping[str, Any] | None,
                   generator: torch.Generator) -> torch.Tensor:
    """Seeded contrast, size, resolution and noise augmentation of magnitude images ``x``
    [B, 1, H, W] (``x`` itself when ``augment`` is empty), three uniform draws per image from
    ``generator`` (and one per optional key); a share ``p`` (default 1) of the images is
    augmented, the rest kept as they are:

    * ``gamma: [g0, g1]``: ``x -> m (x / m)^gamma``, ``m = max x``, ``log gamma`` uniform in
      ``[log g0, log g1]`` (darker or brighter mid-tones at the same maximum);
    * ``zoom: [z0, z1]`` (``<= 1``): the image shrunk by ``z`` uniform in ``[z0, z1]``
      (bilinear, antialiased) at the centre of an empty field of view of the same size (less
      of the field of view covered by anatomy);
    * ``resolution: [r0, r1]`` (``<= 1``, optional): the image resampled to ``r`` times its
      matrix, ``r`` uniform in ``[r0, r1]`` (antialiased), and back (bilinear): a scan acquired
      at a coarser resolution and interpolated to the grid, with less high-frequency content;
    * ``noise: [n0, n1]`` (optional): after the zoom, ``x -> |x + n m (a + i b)|`` over the whole
      field of view, ``n`` uniform in ``[n0, n1]``, ``a, b`` standard normal per pixel: the
      Rician background of a magnitude scan with thermal noise of ``n`` times its maximum.

    ``gamma`` and ``zoom`` default to ``[1, 1]`` (unchanged). Each optional key given adds one
    uniform draw per image (in the order above); the noise fields are drawn after them.

    Training images are augmented before they are undersampled, so every stage sees the
    measurement and the aliasing of the augmented image."""
    if not augment:
        return x
    resolution, noise = augment.get("resolution"), augment.get("noise")
    extra = [k for k in ("resolution", "noise") if augment.get(k) is not None]
    u = torch.rand(x.shape[0], 3 + len(extra), generator=generator, dtype=torch.float64).tolist()
    (g0, g1), (z0, z1) = augment.get("gamma", (1.0, 1.0)), augment.get("zoom", (1.0, 1.0))
    share = float(augment.get("p", 1.0))
    h, w = x.shape[-2:]
    resize = partial(torch.nn.functional.interpolate, mode="bilinear", align_corners=False)
    out = torch.zeros_like(x)
    for i, (ug, uz, up, *ur) in enumerate(u):
        if up >= share:
            out[i] = x[i]
            continue
        gamma = math.exp(math.log(g0) + ug * (math.log(g1) - math.log(g0)))
        m = x[i].amax().clamp_min(torch.finfo(x.dtype).tiny)
        xi = m * (x[i:i + 1].clamp_min(0) / m) ** gamma
        draw = dict(zip(extra, ur))
        if resolution is not None:
            r = resolution[0] + draw["resolution"] * (resolution[1] - resolution[0])
            rh, rw = max(1, round(h * r)), max(1, round(w * r))
            if (rh, rw) != (h, w):
                xi = resize(resize(xi, size=(rh, rw), antialias=True), size=(h, w))
        z = z0 + uz * (z1 - z0)
        nh, nw = max(1, round(h * z)), max(1, round(w * z))
        if (nh, nw) != (h, w):
            xi = resize(xi, size=(nh, nw), antialias=True)
        top, left = (h - nh) // 2, (w - nw) // 2
        out[i:i + 1, :, top:top + nh, left:left + nw] = xi.clamp_min(0)
        if noise is not None:
            sigma = (noise[0] + draw["noise"] * (noise[1] - noise[0])) * float(m)
            a, b = torch.randn(2, h, w, generator=generator, dtype=torch.float64).to(x.device, x.dtype)
            out[i, 0] = torch.sqrt((out[i, 0] + sigma * a) ** 2 + (sigma * b) ** 2)
    return out


def random_batch(images: torch.Tensor | SliceStream, batch_size: int, crop: int | None,
                 generator: torch.Generator,
                 augment: Mapping[str, Any] | None = None) -> torch.Tensor:
    """``batch_size`` images drawn with replacement (from a :class:`SliceStream`: its next
    ``batch_size``), augmented (:func:`augment_images`; none by default), then randomly cropped
    to ``crop`` (None: whole)."""
    n, _, h, w = images.shape
    stream = isinstance(images, SliceStream)
    if not stream:
        idx = torch.randint(n, (batch_size,), generator=generator)
    whole = crop is None or (crop >= h and crop >= w)
    if not whole:
        ch, cw = min(crop, h), min(crop, w)
        tops = torch.randint(h - ch + 1, (batch_size,), generator=generator).tolist()
        lefts = torch.randint(w - cw + 1, (batch_size,), generator=generator).tolist()
    picked = images.next_batch(batch_size) if stream else images[idx.to(images.device)]  # copies
    x = augment_images(picked, augment, generator)
    if whole:
        return x
    return torch.stack([x[j, :, t:t + ch, l:l + cw] for j, (t, l) in enumerate(zip(tops, lefts))])


def undersampled_batch(x: torch.Tensor, acceleration: int, center_fraction: float, seed: int,
                       step: int, first: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample 1-D random masks seeded ``(seed, step, first + i)``: returns ``(|x_u|, k_u,
    mask)`` (``first``: the position of ``x[0]`` in the step's batch, for a micro-batch).

    ``k_u = M F(x)`` (eq. 1), ``x_u = F^-1(k_u)``; ``mask`` is [B, 1, 1, W].
    """
    func = RandomMaskFunc([center_fraction], [acceleration])
    w = x.shape[-1]
    masks = np.stack([func(w, seed=(int(seed) & 0xFFFFFFFF, int(step), first + i))
                      for i in range(x.shape[0])])
    mask = torch.from_numpy(masks).to(x.device).view(x.shape[0], 1, 1, w)
    k_u = undersample(x, mask)
    return ifft2c(k_u).abs().to(x.dtype), k_u, mask


def make_batch(x: torch.Tensor, acceleration: int, center_fraction: float, seed: int,
               step: int, first: int = 0) -> dict[str, torch.Tensor]:
    """Undersample the whole images ``x`` [B, 1, H, W] with the test geometry (masks seeded
    ``(seed, step, first + i)``), then normalise everything by ``s`` (:func:`measurement_scale`).

    Keys: ``target`` [B, 1, H, W], ``x_u`` (zero-filled magnitude) [B, 1, H, W], ``k_u``
    [B, H, W] complex, ``mask`` [B, W], ``scale`` [B, 1, 1, 1]; all divided by ``scale``.
    """
    x_u, k_u, mask = undersampled_batch(x, acceleration, center_fraction, seed, step, first)
    s = measurement_scale(x_u)
    return {"target": x / s, "x_u": x_u / s, "k_u": k_u[:, 0] / s[:, 0], "mask": mask[:, 0, 0],
            "scale": s}


def crop_pair(batch: Mapping[str, torch.Tensor], crop: int, generator: torch.Generator,
              keys: Iterable[str] = ("target", "x_u")) -> dict[str, torch.Tensor]:
    """The same random ``crop x crop`` window of each image in ``keys`` per sample.

    Image-domain models are undersampled on the whole image and cropped afterwards, so that
    the aliasing they learn to remove has the test images' scale (cropping first would alias
    at the crop's width). ``k_u``/``mask`` no longer match the crop and are dropped;
    ``scale`` (per sample) is kept where the batch has one.
    """
    keys = list(keys)
    b, _, h, w = batch[keys[0]].shape
    ch, cw = min(crop, h), min(crop, w)
    tops = torch.randint(h - ch + 1, (b,), generator=generator).tolist()
    lefts = torch.randint(w - cw + 1, (b,), generator=generator).tolist()

    def pick(t: torch.Tensor) -> torch.Tensor:
        return torch.stack([t[i, :, a:a + ch, c:c + cw] for i, (a, c) in enumerate(zip(tops, lefts))])

    return {**{k: pick(batch[k]) for k in keys},
            **({"scale": batch["scale"]} if "scale" in batch else {})}


def stage_masks(cfg: Mapping[str, Any]) -> tuple[int, float]:
    """``(acceleration, center_fraction)`` of a stage config's ``masks`` (set from the run
    config's ``masks`` block by :func:`ldpm.train.stages.stage_config`; without it, the
    ``masks`` block of ``config/config.yaml``)."""
    from ..config import training_masks

    m = cfg.get("masks") or training_masks()
    return int(m["acceleration"]), float(m["center_fraction"])


def scheduled_lr(cfg: Mapping[str, Any], step: int, n_steps: int) -> float:
    """The learning rate of ``step`` (a pure function of it, so resuming needs no scheduler
    state): ``cfg['lr']``, with ``lr_schedule: cosine`` a linear warm-up over ``warmup`` steps
    then a cosine decay to 0 at ``n_steps``."""
    lr = float(cfg["lr"])
    if cfg.get("lr_schedule", "constant") == "constant":
        return lr
    warm = int(cfg.get("warmup") or 0)
    if step < warm:
        return lr * (step + 1) / warm
    return lr * 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, n_steps - warm)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr


def resolve_n_steps(cfg: Mapping[str, Any], n_images: int, n_steps: int | None = None) -> int:
    """``n_steps`` if given, else ``cfg['n_steps']``, else ``ceil(epochs * N / batch_size)``."""
    if n_steps is not None:
        return int(n_steps)
    if cfg.get("n_steps") is not None:
        return int(cfg["n_steps"])
    if cfg.get("epochs") is not None:
        return max(1, math.ceil(cfg["epochs"] * n_images / cfg["batch_size"]))
    raise LdpmInputError("train config", "neither n_steps nor epochs is set", "set one of them")


def micro_generators(generator: torch.Generator, accum: int) -> list[torch.Generator]:
    """The generators of a step's ``accum`` micro-batches: ``[generator]`` itself for one, else
    one per micro-batch, each seeded from a draw of ``generator`` (a pure function of it)."""
    if accum == 1:
        return [generator]
    seeds = torch.randint(2 ** 62, (accum,), generator=generator).tolist()
    return [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]


def accumulate(micro_loss: Callable[[int, torch.Generator], torch.Tensor], accum: int,
               generator: torch.Generator, replicas: Replicas | None = None) -> float:
    """Backpropagate the mean of ``micro_loss(j, g_j)`` over ``j < accum`` (gradient
    accumulation: ``g_j`` from :func:`micro_generators`, one backward pass per micro-batch,
    each loss divided by ``accum``); returns the mean loss. With micro-batches of ``b / accum``
    samples and a mean loss, the gradients are those of one batch of ``b`` up to rounding.

    ``replicas`` (:meth:`Runtime.replicate` of the modules ``micro_loss`` trains): each
    ``micro_loss`` runs through it, so with several ranks the last micro-batch's backward pass
    averages the accumulated gradients over the ranks (the others run in its ``no_sync``)."""
    total = 0.0
    for j, g in enumerate(micro_generators(generator, accum)):
        with (replicas.no_sync() if replicas is not None and j < accum - 1
              else contextlib.nullcontext()):
            loss = micro_loss(j, g) if replicas is None else replicas(micro_loss, j, g)
            (loss if accum == 1 else loss / accum).backward()
        total += loss.item()
    return total / accum


def accumulate_logged(micro_step: Callable[[int, torch.Generator],
                                           tuple[torch.Tensor, Mapping[str, float]]],
                      accum: int, generator: torch.Generator,
                      replicas: Replicas | None = None) -> dict[str, float]:
    """:func:`accumulate` for a ``micro_step(j, g_j)`` that returns its loss and the scalars to
    log; returns each scalar's mean over the micro-batches (with one, its scalars as given)."""
    logs: list[Mapping[str, float]] = []

    def micro_loss(j: int, g: torch.Generator) -> torch.Tensor:
        loss, scalars = micro_step(j, g)
        logs.append(scalars)
        return loss

    accumulate(micro_loss, accum, generator, replicas)
    if accum == 1:
        return dict(logs[0])
    return {k: sum(float(o[k]) for o in logs) / accum for k in logs[0]}


def step_settings(cfg: Mapping[str, Any], runtime: Runtime,
                  stage: str) -> tuple[int, int, str | None]:
    """``(grad_accum, micro_batch, amp)`` of a stage config: micro-batches per step, the
    samples of each (:func:`micro_batch` of ``batch_size``) and the autocast mode, refused here
    (naming ``train.stages.<stage>.amp``) where the device cannot run it."""
    accum = int(cfg.get("grad_accum") or 1)
    micro = micro_batch(runtime, int(cfg["batch_size"]), accum)
    amp = cfg.get("amp")
    autocast(amp, runtime.device, f"train.stages.{stage}.amp")
    return accum, micro, amp


def image_chunks(images: torch.Tensor | SliceStream, size: int) -> Iterator[torch.Tensor]:
    """The whole split in its order, ``size`` images at a time (the last chunk may be
    shorter): slices of a tensor, or read from the stores of a :class:`SliceStream`
    (:meth:`~ldpm.data.dataset.SliceStream.chunks`, the same values), for what a stage computes
    once over every image (latents, a scale) without holding the images in one tensor."""
    if isinstance(images, SliceStream):
        yield from images.chunks(size)
    else:
        for i in range(0, len(images), size):
            yield images[i:i + size]


def micro_batch(runtime: Runtime, batch_size: int, accum: int) -> int:
    """The samples of one micro-batch: this rank's share of ``batch_size`` over ``accum``."""
    local = runtime.local_batch(batch_size)
    if local % accum:
        raise LdpmInputError(f"batch_size {batch_size}", f"does not split into grad_accum {accum} "
                             f"micro-batches of equal size ({local} samples on each of "
                             f"{runtime.world_size} ranks)",
                             f"use a batch_size that is a multiple of {accum * runtime.world_size}")
    return local // accum


def freeze(module: nn.Module) -> nn.Module:
    """``requires_grad_(False)`` and eval mode."""
    module.requires_grad_(False)
    return module.eval()


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """``ema <- d ema + (1 - d) model`` with ``d = min(decay, (1 + step) / (10 + step))``: the
    usual warm-up (TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``), so that a
    short training does not keep the initial weights in its average."""
    d = min(decay, (1.0 + step) / (10.0 + step))
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1.0 - d)


class WeightAverage:
    """A stage's ``ema`` setting: a frozen copy of ``model`` that :func:`ema_update` averages
    after every :meth:`update` and the stage saves as its final weights (:attr:`weights`),
    registered in ``modules`` as ``"ema"`` so it is checkpointed and resumed with the rest. With
    ``ema`` 0 or unset there is no copy and :attr:`weights` is ``model`` itself. The average's
    weights depend far less on the floating-point path (thread count, machine) than the last
    step's."""

    def __init__(self, model: nn.Module, cfg: Mapping[str, Any], modules: dict[str, nn.Module]):
        self.model, self.decay = model, float(cfg.get("ema") or 0.0)
        self.average: nn.Module | None = None
        if self.decay > 0:
            modules["ema"] = self.average = copy.deepcopy(model).requires_grad_(False)

    def update(self, step: int) -> None:
        if self.average is not None:
            ema_update(self.average, self.model, self.decay, step)

    @property
    def weights(self) -> nn.Module:
        """The module the stage saves and returns: the average, or the model without one."""
        return self.average if self.average is not None else self.model


def _save_torch_atomic(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    keys: list[str] = ["step"]
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def _write_dir_atomic(final: Path, writer: Callable[[Path], None]) -> None:
    """Run ``writer(tmp_dir)`` then move ``tmp_dir`` onto ``final`` (replacing an old one)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        writer(tmp)
        os.chmod(tmp, umask_mode(0o777))  # mkdtemp's 0700 -> what mkdir would have made
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


#: the temporary siblings :func:`train` writes in a checkpoint folder (see :mod:`ldpm.io`)
_TEMP_FILES = ("last.pt", "log.csv", "meta.json")
_TEMP_DIR = re.compile(r"\.final\.(old|[A-Za-z0-9_]{8})")


def remove_stale_checkpoint_temps(ckpt_dir: Path) -> list[Path]:
    """Remove the temporary files and folders a crashed run left in ``ckpt_dir``; returns them."""
    removed = remove_stale_temps(ckpt_dir, _TEMP_FILES)
    for p in sorted(ckpt_dir.iterdir()):
        if _TEMP_DIR.fullmatch(p.name) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
            removed.append(p)
    return removed


def _load_last(last: Path) -> dict[str, Any]:
    """The checkpoint dict in ``last`` (``weights_only``); one error naming it if unreadable."""
    fix = f"delete {last} to train the stage from step 0 (or restore an intact copy)"
    with loading_checkpoint(last, fix, "is not a readable training checkpoint"):
        with warnings_once(f"loading {last}"):  # e.g. "Detected pickle protocol 4"
            ckpt = torch.load(last, map_location="cpu", weights_only=True)
    keys = ("stage", "seed", "step", "rows", "modules", "optimizers")
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in keys):
        raise LdpmInputError(last, f"is not a training checkpoint of ldpm (needs keys "
                             f"{', '.join(keys)})", fix)
    return ckpt


_NONFINITE_FIX = ("lower the learning rate (lr) or check the training data for NaN/inf values, "
                  "then delete the checkpoint folder and train again")


def _check_finite(out: Mapping[str, float], stage: str, step: int, last: Path) -> None:
    """Stop training when a logged scalar (the loss or one of its terms) is NaN or infinite."""
    bad = {k: v for k, v in out.items() if not math.isfinite(v)}
    if bad:
        terms = ", ".join(f"{k}={v}" for k, v in bad.items())
        kept = f"; {last} keeps the last finite state" if last.is_file() else ""
        raise LdpmInputError(f"training stage {stage!r}", f"the loss is not finite at step {step} "
                             f"({terms}){kept}", _NONFINITE_FIX)


def _check_finite_weights(modules: Mapping[str, nn.Module], stage: str, step: int) -> None:
    """Refuse to checkpoint weights that became NaN/inf (a finite loss with exploding gradients)."""
    for name, m in modules.items():
        params = [p.detach() for p in m.parameters() if p.is_floating_point()]
        if params and not bool(torch.stack([p.isfinite().all() for p in params]).all()):
            raise LdpmInputError(f"training stage {stage!r}", f"the weights of {name!r} are not "
                                 f"finite after step {step}", _NONFINITE_FIX)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


#: config keys that may change between a run and its resumption (they set only its length, or
#: how many processes read its data)
LENGTH_KEYS = ("n_steps", "epochs", "ckpt_every", "loader_workers")


def _resumable(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The part of a stage config a checkpoint must match to be resumed."""
    return {k: v for k, v in _jsonable(dict(config or {})).items() if k not in LENGTH_KEYS}


def train(step_fn: StepFn, modules: Mapping[str, nn.Module],
          optimizers: Mapping[str, torch.optim.Optimizer], ckpt_dir: str | Path, n_steps: int,
          seed: int, save_final: Callable[[Path], None], *, config: Mapping[str, Any],
          log: bool = True, stage: str = "train",
          notes: Iterable[str] = (), stop_after: int | None = None,
          meta_extra: Callable[[], Mapping[str, Any]] | None = None,
          runtime: Runtime | None = None, loader: SliceStream | None = None) -> dict[str, Any]:
    """Run ``step_fn(step, runtime.generator(seed, step))`` for steps ``[start, n_steps)``.

    ``step_fn`` does the forward/backward/optimizer update and returns scalars to log (``loss``
    first). ``modules``/``optimizers`` are the states saved in ``last.pt`` (frozen modules need
    not be listed). Resumes from ``ckpt_dir/last.pt`` if present. ``stop_after`` ends this call
    after that many steps (a checkpoint is written, no ``final/``), as an interruption would.
    Writes ``final/`` via ``save_final(tmp_dir)`` once all steps are done. Returns the meta dict.

    ``runtime`` (default: one process on the CPU): with several data-parallel ranks, every rank
    starts from rank 0's ``modules`` (after a resume too), logged scalars are averaged, and only
    rank 0 writes files; ``step_fn`` runs its loss computations through the
    :meth:`~ldpm.train.runtime.Runtime.replicate` of the modules it trains, so that
    ``DistributedDataParallel`` averages their gradients (:mod:`ldpm.train.runtime`).
    ``modules`` must already be on its device.

    ``loader``: the :class:`SliceStream` the step function reads, if any; its position is saved
    in ``last.pt`` and restored on resume.

    ``config``: the stage config, saved in ``last.pt`` (a checkpoint resumes only under the same
    config, but for its length); ``last.pt`` is written every ``config["ckpt_every"]`` steps.
    """
    ckpt_every = int(config["ckpt_every"])
    rt = runtime or Runtime()
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    last, final = ckpt_dir / "last.pt", ckpt_dir / "final"
    if rt.is_main:
        remove_stale_checkpoint_temps(ckpt_dir)
    start, rows, seconds = 0, [], 0.0
    if last.is_file():
        ckpt = _load_last(last)
        if ckpt.get("seed") != seed or ckpt.get("stage") != stage:
            raise LdpmInputError(last, f"was written for stage {ckpt.get('stage')!r} seed "
                                 f"{ckpt.get('seed')}, not {stage!r} seed {seed}",
                                 "delete the checkpoint folder or use its seed")
        if "config" in ckpt and _resumable(ckpt["config"]) != _resumable(config):
            raise LdpmInputError(last, "was written with another stage config (other than its "
                                 "length)", "delete the checkpoint folder to train from scratch")
        with loading_checkpoint(last, f"delete {last} to train the stage from step 0"):
            for name, m in modules.items():
                m.load_state_dict(ckpt["modules"][name])
            for name, o in optimizers.items():
                o.load_state_dict(ckpt["optimizers"][name])
            start, rows = int(ckpt["step"]), list(ckpt["rows"])
            seconds = float(ckpt.get("seconds", 0.0))
            if (loader is None) != ("loader" not in ckpt):
                raise LdpmInputError(last, "was written by a run that read its images " + (
                    "from a stream (loader: stream)" if loader is None else "from memory"),
                    "delete the checkpoint folder, or train with the loader it was written with")
            if loader is not None:
                loader.load_state_dict(ckpt["loader"])
        if start > n_steps:
            raise LdpmInputError(last, f"holds {start} steps, more than the {n_steps} asked",
                                 "ask for at least as many steps, or delete the checkpoint folder")

    rt.broadcast_parameters(modules.values())

    def checkpoint(step: int) -> None:
        _check_finite_weights(modules, stage, step - 1)  # on every rank: all stop alike
        if not rt.is_main:
            return
        _save_torch_atomic({
            "stage": stage, "seed": seed, "step": step, "rows": rows, "seconds": seconds,
            "config": _jsonable(dict(config or {})),
            "modules": {k: m.state_dict() for k, m in modules.items()},
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            **({"loader": loader.state_dict()} if loader is not None else {}),
        }, last)
        _write_log(ckpt_dir / "log.csv", rows)

    prev_det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        for m in modules.values():
            m.train()
        end = n_steps if stop_after is None else min(n_steps, start + stop_after)
        bar = tqdm(range(start, end), desc=stage, disable=not (log and rt.is_main), initial=start,
                   total=n_steps, leave=False)
        t0, base = time.perf_counter(), seconds
        for step in bar:
            out = {k: float(v) for k, v in step_fn(step, rt.generator(seed, step)).items()}
            out = rt.mean_scalars(out)  # the same on every rank, so all ranks stop alike
            _check_finite(out, stage, step, last)
            rows.append({"step": step, **out})
            if log and "loss" in out:
                bar.set_postfix(loss=f"{out['loss']:.4g}")
            if (step + 1) % max(1, ckpt_every) == 0 or step + 1 == end:
                seconds = base + time.perf_counter() - t0
                checkpoint(step + 1)
        seconds = base + time.perf_counter() - t0
        done = end
    finally:
        torch.use_deterministic_algorithms(prev_det)

    meta = {"stage": stage, "seed": seed, "n_steps": n_steps, "steps_done": done,
            "seconds": round(seconds, 3), "config": _jsonable(dict(config or {})),
            "notes": list(notes), "torch": torch.__version__,
            "device": str(rt.device), "world_size": rt.world_size}
    if not rt.is_main:
        rt.barrier()  # rank 0 writes final/ and meta.json; every rank returns once they exist
        return meta
    if done == n_steps and (not final.is_dir() or done > start):
        for m in modules.values():
            m.eval()
        _write_dir_atomic(final, save_final)
    if meta_extra is not None:
        meta.update(_jsonable(dict(meta_extra())))
    write_text_atomic(ckpt_dir / "meta.json", json.dumps(meta, indent=2) + "\n")
    rt.barrier()
    return meta
