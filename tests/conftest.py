"""Shared fixtures: one torch thread for the suite; tiny hand-made fastMRI-format files."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np
import pytest


#: a tiny pipeline config (merged over config/config.yaml) with one trained method: data, GPU
#: training, GPU and CPU reconstruction, metrics and report jobs in a few minutes on 2 cores
TINY_TWO_METHODS = {
    "embedded": {"n_subjects": 4, "slices_per_volume": 2, "contrasts": ["T1"]},
    "data": {"crop_size": 64, "split_fractions": {"train": 0.5, "val": 0.0, "test": 0.5}},
    "inference": {"n_shards": 1},
    "metrics": {"kid_subset_size": 4},
    "methods": ["zero_filled", "unet"],
    "train": {"stages": {"unet": {"n_steps": 2}}},
    "diffcode": {"enabled": False},  # the DiffCode study would add its 14 stages and 10 methods
    "lora": {"enabled": False},  # the LoRA study would add LDPM's stages and methods
}


#: tiny networks for unit tests: a 4-level (8x) VAE and a denoiser with cross-attention
TINY_VAE = {"block_out_channels": [8, 8, 8, 8], "norm_num_groups": 4}
TINY_DENOISER = {"block_out_channels": [8, 16], "cross_attention_dim": 8, "attention_head_dim": 4,
                 "norm_num_groups": 4}


#: the snakemake of the interpreter running the tests (the venv's)
SNAKEMAKE = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or "snakemake"


def job_stats(text: str) -> dict[str, int]:
    """Snakemake's first ``Job stats:`` table as {rule: count} ({} when nothing is to be done)."""
    if "Job stats:" not in text:
        return {}
    block = text.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {m.group(1): int(m.group(2)) for line in block.splitlines()
            if (m := re.match(r"^(\w+)\s+(\d+)$", line.strip())) and m.group(1) != "total"}


def workflow_rules() -> set[str]:
    """Every rule name of the workflow: ``rule NAME:`` and ``use rule X as NAME``."""
    rules: set[str] = set()
    for smk in (Path(__file__).resolve().parents[1] / "workflow" / "rules").glob("*.smk"):
        text = smk.read_text()
        rules |= set(re.findall(r"^\s*rule (\w+):", text, flags=re.M))
        rules |= set(re.findall(r"^\s*use rule \w+ as (\w+)", text, flags=re.M))
    return rules


#: test files whose skips hide failures in CI: the real-SLURM run, fastMRI's reference networks,
#: and the value-pinning tests of the models, samplers, trainers, report and studies
NO_SKIP_IN_CI = {"test_slurm.py", "test_official_weights.py", "test_ldpm_method.py",
                 "test_sampling.py", "test_models.py", "test_training.py", "test_lora.py",
                 "test_baselines.py", "test_report.py", "test_diffcode.py"}


def _in_ci() -> bool:
    import os

    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Under ``CI=true`` a skip in :data:`NO_SKIP_IN_CI` is a failure that prints the skip's
    reason; elsewhere it stays a skip (``-ra`` prints why)."""
    report = yield
    if report.skipped and _in_ci() and item.path.name in NO_SKIP_IN_CI \
            and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid}: skipped under CI=true, which must run it: {reason}"
    return report


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread: tiny models on a small shared machine run many times faster."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


ISMRMRD_TEMPLATE = (
    '<?xml version="1.0" encoding="utf-8"?>'
    '<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><acquisitionSystemInformation>'
    "<systemVendor>SIEMENS</systemVendor>{field}</acquisitionSystemInformation>"
    "</ismrmrdHeader>"
)


def reference_rss(kspace: np.ndarray, crop: int) -> np.ndarray:
    """fastMRI's reconstruction_rss written out with plain numpy: [slices, crop, crop]."""
    img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace, axes=(-2, -1)), norm="ortho"),
                          axes=(-2, -1))
    rss = np.sqrt((np.abs(img) ** 2).sum(axis=1))
    top, left = (rss.shape[-2] - crop) // 2, (rss.shape[-1] - crop) // 2
    return rss[:, top:top + crop, left:left + crop].astype(np.float32)


def write_fastmri_file(path: str | Path, *, n_slices: int = 5, n_coils: int = 2,
                       shape: tuple[int, int] = (32, 16), acquisition: str | None = "AXT2",
                       field_strength: float | None = 2.89362, patient_id: str | None = "p001",
                       crop: int = 16, with_rss: bool = False, header: str | None = None,
                       kspace: np.ndarray | None = None, seed: int = 0) -> Path:
    """Write a tiny fastMRI-format multicoil file; ``header=''`` omits the ISMRMRD header."""
    path = Path(path)
    if kspace is None:
        rng = np.random.default_rng(seed)
        size = (n_slices, n_coils, *shape)
        kspace = (rng.normal(size=size) + 1j * rng.normal(size=size)).astype(np.complex64)
    if header is None:
        field = ("" if field_strength is None else
                 f"<systemFieldStrength_T>{field_strength}</systemFieldStrength_T>")
        header = ISMRMRD_TEMPLATE.format(field=field)
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace)
        if header:
            f.create_dataset("ismrmrd_header", data=np.bytes_(header.encode()))
        if with_rss:
            f.create_dataset("reconstruction_rss", data=reference_rss(kspace, crop))
        if acquisition is not None:
            f.attrs["acquisition"] = acquisition
        if patient_id is not None:
            f.attrs["patient_id"] = patient_id
    return path


@pytest.fixture
def make_fastmri_file(tmp_path: Path) -> Callable[..., Path]:
    """``make_fastmri_file(name, **kwargs)`` writes ``tmp_path/name`` (see write_fastmri_file)."""

    def make(name: str = "file_brain_AXT2_200_6002000.h5", **kwargs: Any) -> Path:
        return write_fastmri_file(tmp_path / name, **kwargs)

    return make


def smooth_slices(disc: bool = False):
    """Four smooth 32x32 'slices' in [0, 1] (sums of three Gaussian blobs); ``disc``: zero
    outside a centred disc, like a head in its field of view."""
    import torch

    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    out = []
    for _ in range(4):
        c = torch.rand(3, 2, generator=g) - 0.5
        img = sum(torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.1) for cx, cy in c.tolist())
        if disc:
            img = img * ((xx ** 2 + yy ** 2) < 0.8).float()
        out.append(img / img.max())
    return torch.stack(out)[:, None].float()


def write_tiny_sd(root: Path, cross_attention_dim: int = 16) -> Path:
    """A folder in Stable Diffusion 2-1-base's diffusers layout with tiny random weights:
    ``vae/`` (an 8x AutoencoderKL), ``unet/`` (a UNet2DConditionModel with cross-attention),
    ``text_encoder/`` + ``tokenizer/`` (a tiny CLIP from ``transformers``), ``scheduler/`` and
    ``model_index.json``. Seeded: the same weights on every call."""
    import json

    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = Path(root)
    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8),
                  layers_per_block=1, latent_channels=4, norm_num_groups=4,
                  scaling_factor=0.18215).save_pretrained(root / "vae")
    UNet2DConditionModel(in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                         cross_attention_dim=cross_attention_dim, attention_head_dim=4,
                         norm_num_groups=4).save_pretrained(root / "unet")
    CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=cross_attention_dim,
                                 intermediate_size=2 * cross_attention_dim, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=77,
                                 bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
                  ).save_pretrained(root / "text_encoder")
    tok = root / "tokenizer"
    tok.mkdir(parents=True)
    # CLIP's byte-level BPE with its two special tokens at SD's ids and no merges: "" -> BOS, EOS
    vocab = {chr(c): c for c in range(256)}
    vocab.update({"<|startoftext|>": 49406, "<|endoftext|>": 49407})
    (tok / "vocab.json").write_text(json.dumps(vocab))
    (tok / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(tok / "vocab.json"), str(tok / "merges.txt"), model_max_length=77,
                  pad_token="<|endoftext|>").save_pretrained(tok)
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
        "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1}))
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "vae": ["diffusers", "AutoencoderKL"],
        "unet": ["diffusers", "UNet2DConditionModel"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "PNDMScheduler"]}))
    return root
