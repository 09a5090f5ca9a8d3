"""Streamed training data (``loader: stream``): the dataset over the slice stores, the seeded
sharding sampler, bit-exact resume of a streamed run of every streaming stage, what a stage
computes over the whole split read chunk by chunk, gradient accumulation, the config keys (per
stage and global)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from ldpm.config import (RUN_KEYS, run_keys, stage_overrides, validate_config,
                         validate_stage_overrides)
from ldpm.data.dataset import EpochShardSampler, SliceDataset, SliceStream
from ldpm.errors import LdpmInputError
from ldpm.train.loop import accumulate, micro_generators, random_batch
from ldpm.train.runtime import Runtime
from ldpm.train.sketcher import train_sketcher
from ldpm.train.stages import run_stage, stage_config, training_images

from conftest import TINY_DENOISER

TINY = {"model": {"embed_dim": 8, "depths": [1], "num_heads": [2], "window_size": 8},
        "lr": 3e-3, "batch_size": 4, "crop": None, "ckpt_every": 2, "augment": None}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """Three volumes of 5 slices (16 x 16), every slice in the train split."""
    from conftest import write_fastmri_file

    from ldpm.data.store import build_manifest, preprocess_volume

    tmp = tmp_path_factory.mktemp("stream")
    stores = []
    for i, pid in enumerate(("p001", "p002", "p003")):
        raw = write_fastmri_file(tmp / f"file_brain_AXT2_200_{6002000 + i}.h5", patient_id=pid,
                                 seed=i)
        stores.append(preprocess_volume(raw, tmp / f"store{i}.h5", crop_size=16,
                                        drop_last_slices=0))
    path = tmp / "manifest.csv"
    build_manifest(stores, path, {"train": 1.0, "val": 0.0, "test": 0.0}, seed=0)
    return path


def _stream(manifest, seed=3, workers=0, rank=0, world=1):
    return SliceStream(SliceDataset(manifest, "train", normalize=True), seed, rank, world, workers)


def test_dataset_reads_each_slice_as_the_in_memory_split_holds_it(manifest):
    images = training_images(manifest)
    ds = SliceDataset(manifest, "train", normalize=True)
    assert len(ds) == len(images) == 15 and ds.image_shape == (16, 16)
    assert not ds._files  # nothing opened before an item is asked for
    for i in (0, 7, 14):
        assert torch.equal(ds[i], images[i])
    assert len(ds._files) == 3  # one store per volume of 5 slices, each opened once
    stream = _stream(manifest)
    assert len(stream) == 15 and stream.shape == (15, 1, 16, 16) and stream.to("cpu") is stream


def test_sampler_shards_disjointly_and_reshuffles_per_epoch_with_the_seed():
    ranks = [EpochShardSampler(16, seed=5, rank=r, world_size=2) for r in (0, 1)]
    shards = [list(s) for s in ranks]
    assert len(shards[0]) == len(shards[1]) == 8 == len(ranks[0])
    assert not set(shards[0]) & set(shards[1]) and set(shards[0]) | set(shards[1]) == set(range(16))
    for s in ranks:
        s.set_epoch(1)
    epoch1 = [list(s) for s in ranks]
    assert epoch1 != shards and set(epoch1[0]) | set(epoch1[1]) == set(range(16))
    again = EpochShardSampler(16, seed=5, rank=0, world_size=2)
    again.set_epoch(1)
    assert list(again) == epoch1[0]  # a pure function of (seed, epoch, rank)
    assert list(EpochShardSampler(16, seed=6, rank=0, world_size=2)) != shards[0]
    odd = [list(EpochShardSampler(15, seed=5, rank=r, world_size=2)) for r in (0, 1)]
    assert len(odd[0]) == len(odd[1]) == 8 and set(odd[0]) | set(odd[1]) == set(range(15))


def test_stream_runs_over_epochs_and_resumes_at_its_position(manifest):
    images = training_images(manifest)
    a = _stream(manifest)
    batches = [a.next_batch(4) for _ in range(5)]  # 20 samples: epoch 0 and 5 of epoch 1
    assert a.state_dict() == {"epoch": 1, "index": 5}
    sampler = EpochShardSampler(15, seed=3)
    order = list(sampler)
    sampler.set_epoch(1)
    order += list(sampler)
    assert torch.equal(torch.cat(batches), images[order[:20]])
    b = _stream(manifest, workers=1)  # read by a worker process: the same samples
    b.load_state_dict({"epoch": 0, "index": 12})
    assert torch.equal(b.next_batch(4), torch.cat(batches)[12:16])
    b.close()
    with pytest.raises(ValueError, match="outside"):
        b.load_state_dict({"epoch": 0, "index": 15})


def test_random_batch_from_a_stream_crops_with_the_generator(manifest):
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    x = random_batch(_stream(manifest), 3, 8, g1)
    y = random_batch(_stream(manifest), 3, 8, g2)
    assert x.shape == (3, 1, 8, 8) and torch.equal(x, y)


def _weights(ckpt_dir):
    return load_file(ckpt_dir / "final" / "model.safetensors")


def test_interrupted_streamed_run_resumes_bit_identically(manifest, tmp_path):
    cfg = {**TINY, "loader": "stream"}
    n, k = 6, 3  # 24 samples of 15 per epoch: the interruption and the end in different epochs
    with _stream(manifest) as s:
        train_sketcher(s, cfg, tmp_path / "a", seed=3, n_steps=n, log=False)
    with _stream(manifest) as s:
        train_sketcher(s, cfg, tmp_path / "b", seed=3, n_steps=n, log=False, stop_after=k)
    last = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert last["step"] == k and last["loader"] == {"epoch": 0, "index": 12}
    assert not (tmp_path / "b" / "final").exists()
    with _stream(manifest, workers=1) as s:  # a new process would start at (0, 0): resumes
        train_sketcher(s, {**cfg, "loader_workers": 1}, tmp_path / "b", seed=3, n_steps=n,
                       log=False)
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[key], wb[key]) for key in wa)
    assert (tmp_path / "a" / "log.csv").read_text() == (tmp_path / "b" / "log.csv").read_text()
    # a checkpoint of the streamed run is not resumed from memory (and the other way round)
    with _stream(manifest) as s:
        train_sketcher(s, cfg, tmp_path / "c", seed=3, n_steps=n, log=False, stop_after=1)
    with pytest.raises(LdpmInputError, match="from a stream"):
        train_sketcher(training_images(manifest), cfg, tmp_path / "c", seed=3, n_steps=n, log=False)


def test_accumulated_gradient_equals_the_whole_batch_gradient():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.GELU(),
                                torch.nn.Conv2d(4, 1, 3, padding=1)).double()
    data = torch.rand(8, 1, 12, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def grads(accum):
        model.zero_grad(set_to_none=True)
        b = len(data) // accum
        loss = accumulate(lambda j, g: (model(data[j * b:(j + 1) * b]) - 0.5).abs().mean(),
                          accum, torch.Generator().manual_seed(2))
        return loss, [p.grad.clone() for p in model.parameters()]

    loss1, g1 = grads(1)
    for accum in (2, 4):
        loss_k, gk = grads(accum)
        assert loss_k == pytest.approx(loss1, rel=1e-12)
        for a, b in zip(g1, gk):  # float64: equal up to the order of the sums
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    gen = torch.Generator().manual_seed(2)
    assert micro_generators(gen, 1) == [gen]
    two = micro_generators(torch.Generator().manual_seed(2), 2)
    assert torch.rand(1, generator=two[0]) != torch.rand(1, generator=two[1])


def test_sketcher_with_grad_accum_steps_as_with_the_whole_batch(manifest, tmp_path):
    """Streamed samples and masks seeded by position in the batch: 2 micro-batches of 2 are
    the batch of 4, so one step gives the same weights up to rounding."""
    cfg = {**TINY, "loader": "stream"}
    out = {}
    for accum in (1, 2):
        with _stream(manifest) as s:
            model = train_sketcher(s, {**cfg, "grad_accum": accum}, tmp_path / str(accum), seed=3,
                                   n_steps=1, log=False)
        out[accum] = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(out[1], out[2], rtol=0, atol=1e-6)
    with pytest.raises(LdpmInputError, match="grad_accum 3"):
        train_sketcher(torch.rand(4, 1, 16, 16), {**TINY, "grad_accum": 3}, tmp_path / "x",
                       n_steps=1, log=False)


def test_run_keys_are_validated_and_bf16_is_refused_on_the_cpu(manifest, tmp_path):
    ok = validate_stage_overrides("sketcher", {"loader": "stream", "loader_workers": "2",
                                               "grad_accum": 2, "amp": "null"})
    assert ok == {"loader": "stream", "loader_workers": 2, "grad_accum": 2, "amp": None}
    for bad, match in (({"loader": "disk"}, "loader"), ({"grad_accum": 0}, "grad_accum"),
                       ({"amp": "fp16"}, "amp"), ({"loader_workers": -1}, "loader_workers")):
        with pytest.raises(LdpmInputError, match=f"train.stages.sketcher.{match}"):
            validate_stage_overrides("sketcher", bad)
    assert validate_stage_overrides("unet", {"loader": "stream", "grad_accum": 2}) == \
        {"loader": "stream", "grad_accum": 2}
    for stage, key in (("unet", "amp"), ("vae_natural", "loader"), ("lora_r4", "loader")):
        with pytest.raises(LdpmInputError, match=f"{stage}.{key}: unknown key"):
            validate_stage_overrides(stage, {key: RUN_KEYS[key]})
    with pytest.raises(LdpmInputError, match="amp: bf16 autocast needs a CUDA device"):
        train_sketcher(torch.rand(4, 1, 16, 16), {**TINY, "amp": "bf16"}, tmp_path / "bf16",
                       n_steps=1, log=False, runtime=Runtime())


def test_run_keys_at_their_defaults_leave_the_stage_config_as_it_is():
    default = stage_config("sketcher", {}, "default")
    assert stage_config("sketcher", {"loader": "memory", "loader_workers": None, "grad_accum": 1,
                                     "amp": None}, "default") == default
    assert stage_config("sketcher", {"loader": "stream"}, "default") == {**default,
                                                                          "loader": "stream"}


def test_run_stage_streams_without_loading_the_split(manifest, tmp_path, monkeypatch):
    import ldpm.train.stages as stages

    def refuse(*a, **k):
        raise AssertionError("the whole split was loaded")

    monkeypatch.setattr(stages, "training_images", refuse)
    overrides = {**{k: v for k, v in TINY.items() if k != "augment"}, "loader": "stream",
                 "n_steps": 2}
    run_stage("sketcher", manifest, tmp_path / "sk", overrides, "default", 0, {}, {},
              device="cpu")
    meta = json.loads((tmp_path / "sk" / "meta.json").read_text())
    assert meta["steps_done"] == 2 and meta["config"]["loader"] == "stream"
    assert torch.load(tmp_path / "sk" / "last.pt", weights_only=True)["loader"] == \
        {"epoch": 0, "index": 8}


# ------------------------------------------------------------------------- the other stages

VAE = {"model": {"block_out_channels": [8, 8], "norm_num_groups": 4, "latent_channels": 4},
       "lr": 3e-3, "lr_schedule": "constant", "warmup": 0, "disc_lr": 1e-3, "batch_size": 4,
       "crop": None, "ckpt_every": 2, "disc": {"ndf": 8, "n_layers": 1}, "disc_start": 2,
       "augment": None}
DENOISER = {"model": TINY_DENOISER, "lr": 3e-3, "lr_schedule": "constant", "warmup": 0,
            "batch_size": 4, "crop": None, "ckpt_every": 2}
CONTROLNET = {"lr": 1e-2, "lr_schedule": "constant", "warmup": 0, "batch_size": 4, "crop": None,
              "ckpt_every": 2, "n_masks": None, "augment": None}
UNET = {"model": {"chans": 4, "num_pool_layers": 2, "drop_prob": 0.0}, "batch_size": 4,
        "crop": None, "ckpt_every": 2, "augment": None}


@pytest.fixture(scope="module")
def frozen():
    """A tiny random VAE (2x), Sketcher and denoiser for the later stages."""
    from ldpm.models import Sketcher, SwinIR, build_denoiser, build_vae, null_text_embedding

    with torch.random.fork_rng():
        torch.manual_seed(0)
        vae = build_vae(VAE["model"]).eval().requires_grad_(False)
        sk = Sketcher(SwinIR(TINY["model"])).eval().requires_grad_(False)
        unet = build_denoiser(TINY_DENOISER).eval().requires_grad_(False)
    return vae, sk, unet, null_text_embedding(unet)


def _train_stage(stage, images, frozen, ckpt_dir, cfg, **kw):
    from ldpm.train.baselines import train_baseline
    from ldpm.train.controlnet import train_controlnet
    from ldpm.train.denoiser import train_denoiser
    from ldpm.train.vae import train_vae

    vae, sk, unet, null = frozen
    kw = {"seed": 3, "log": False, **kw}
    if stage == "vae":
        return train_vae(images, {**VAE, **cfg}, ckpt_dir, **kw)
    if stage == "denoiser":
        return train_denoiser(images, {**DENOISER, **cfg}, ckpt_dir, vae, **kw)
    if stage == "controlnet":
        return train_controlnet(images, {**CONTROLNET, **cfg}, ckpt_dir, sk, vae, unet, null, **kw)
    return train_baseline(stage, images, {**UNET, **cfg}, ckpt_dir, **kw)


def _files(ckpt_dir):
    """Every file of ``final/`` and the log, as bytes."""
    out = {p.relative_to(ckpt_dir): p.read_bytes() for p in sorted((ckpt_dir / "final").rglob("*"))
           if p.is_file()}
    return {**out, "log.csv": (ckpt_dir / "log.csv").read_bytes()}


@pytest.mark.parametrize("stage,cfg", [
    ("unet", {"grad_accum": 2}),
    ("vae", {"grad_accum": 2}),  # the GAN term (from step 2) and its discriminator accumulated
    ("denoiser", {}),
    ("controlnet", {}),  # n_masks null: the steps read the stream
    ("controlnet", {"n_masks": 2, "grad_accum": 2}),  # the pool built from the stores
])
def test_interrupted_streamed_run_of_each_stage_resumes_bit_identically(
        manifest, frozen, tmp_path, stage, cfg):
    cfg = {**cfg, "loader": "stream", "loader_workers": 1}  # recorded in a baseline's final/
    n, k = 6, 3  # 24 samples of 15 per epoch: the interruption and the end in different epochs
    with _stream(manifest) as s:
        _train_stage(stage, s, frozen, tmp_path / "a", cfg, n_steps=n)
    with _stream(manifest) as s:
        _train_stage(stage, s, frozen, tmp_path / "b", cfg, n_steps=n, stop_after=k)
    assert not (tmp_path / "b" / "final").exists()
    with _stream(manifest, workers=1) as s:  # a new process starts its stream at (0, 0)
        _train_stage(stage, s, frozen, tmp_path / "b", cfg, n_steps=n)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a.keys() == b.keys() and all(a[f] == b[f] for f in a), \
        [str(f) for f in a if a[f] != b.get(f)]


def test_what_a_stage_computes_over_the_split_reads_the_stores_in_chunks(manifest, frozen,
                                                                         monkeypatch):
    """The VAE's latent scale, the denoiser's latents and the control branch's condition pool
    from a stream equal those from the split in memory, bit for bit, and the stream delivers
    no chunk larger than asked."""
    from ldpm.train.controlnet import condition_pool
    from ldpm.train.denoiser import training_latents
    from ldpm.train.vae import latent_std, normalised_chunks

    vae, sk, _, _ = frozen
    images = training_images(manifest)
    stream = _stream(manifest)
    sizes = []
    chunks = SliceStream.chunks

    def counted(self, size):
        for x in chunks(self, size):
            sizes.append((size, len(x)))
            yield x

    monkeypatch.setattr(SliceStream, "chunks", counted)
    masks, cfg = (4, 0.08), {"masks": {"acceleration": 4, "center_fraction": 0.08}, "flip": True}
    assert latent_std(vae, normalised_chunks(stream, cfg, 1)) == \
        latent_std(vae, normalised_chunks(images, cfg, 1))
    assert torch.equal(training_latents(vae, stream, cfg, 1), training_latents(vae, images, cfg, 1))
    a = condition_pool(sk, vae, stream, masks, 1, n_masks=2, chunk=4)
    b = condition_pool(sk, vae, images, masks, 1, n_masks=2, chunk=4)
    assert all(torch.equal(a[key], b[key]) for key in b) and len(a["c"]) == 2 * len(images)
    assert sizes and all(n <= size for size, n in sizes) and (4, 3) in sizes  # 15 = 3 x 4 + 3
    assert stream.state_dict() == {"epoch": 0, "index": 0}  # the training position is untouched
    stream.close()


def test_streamed_denoiser_trains_as_from_memory(manifest, frozen, tmp_path):
    """Its steps read the latents, which are the same from the stores as from memory."""
    with _stream(manifest) as s:
        _train_stage("denoiser", s, frozen, tmp_path / "s", {"loader": "stream"}, n_steps=2)
    _train_stage("denoiser", training_images(manifest), frozen, tmp_path / "m", {}, n_steps=2)
    a, b = _files(tmp_path / "s"), _files(tmp_path / "m")
    assert all(a[f] == b[f] for f in a)


# ------------------------------------------------------------------------- global keys


def test_global_run_keys_are_inherited_and_a_stage_key_overrides_them():
    train = {"preset": "default", "loader": "stream", "grad_accum": 2, "amp": None,
             "stages": {"unet": {"loader": "memory", "n_steps": 5}, "vae": {"amp": "bf16"}}}
    assert stage_overrides(train, "sketcher") == {"loader": "stream", "grad_accum": 2}
    assert stage_overrides(train, "unet") == {"loader": "memory", "grad_accum": 2, "n_steps": 5}
    assert stage_overrides(train, "vae") == {"loader": "stream", "grad_accum": 2, "amp": "bf16"}
    assert stage_overrides({**train, "amp": "bf16"}, "varnet") == {"loader": "stream",
                                                                   "grad_accum": 2}
    for stage in ("vae_natural", "lora_r4", "lora_eps_t1"):  # they take none
        assert run_keys(stage) == () and stage_overrides(train, stage) == {}
    # keys at their defaults are left out: the default config gives each stage its own entry
    default = {"preset": "default", "stages": {"unet": {"n_steps": 5}}, **RUN_KEYS}
    assert stage_overrides(default, "unet") == {"n_steps": 5}
    assert stage_overrides(default, "sketcher") == {}
    unet = stage_config("unet", stage_overrides(train, "unet"), "default")
    assert "loader" not in unet and unet["grad_accum"] == 2  # memory: as without the key


@pytest.mark.parametrize("key,value", [("loader", "disk"), ("grad_accum", 0), ("amp", "fp16"),
                                       ("loader_workers", -2)])
def test_a_bad_global_run_key_is_refused_in_one_line_naming_it(key, value):
    import yaml

    from ldpm.config import CONFIG_FILE, load_config

    with open(CONFIG_FILE) as f:
        cfg = yaml.safe_load(f)
    assert all(cfg["train"][k] == v for k, v in RUN_KEYS.items())  # the defaults, spelled out
    assert load_config(CONFIG_FILE, {"train": {"loader": "stream"}})["train"]["loader"] == "stream"
    cfg["train"][key] = value
    with pytest.raises(LdpmInputError) as e:
        validate_config(cfg, "my.yaml", check_paths=False)
    msg = str(e.value)
    assert msg.startswith(f"my.yaml: train.{key}: ") and "Fix:" in msg and "\n" not in msg, msg


def test_the_train_rule_passes_each_stage_its_merged_overrides(tmp_path):
    """The dry run's commands: the global loader reaches every streaming stage but the one
    that sets its own, and no other stage."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    from conftest import SNAKEMAKE
    from ldpm.config import REPO_ROOT

    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    proc = subprocess.run(
        [SNAKEMAKE, "-n", "-p", "--snakefile", str(REPO_ROOT / "Snakefile"), "--directory",
         str(tmp_path / "w"), "--config",
         "train={loader: stream, grad_accum: 2, stages: {unet: {loader: memory}}}",
         "lora={enabled: true, methods: [ldpm_lora_mix]}", "--", *[f"results/models/{s}/final" for s in
                                          ("sketcher", "vae_natural", "unet", "lora_t1")]],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    commands = {m.group(1): line for line in out.splitlines()
                if (m := re.search(r"--stage (\w+) ", line))}
    assert '"grad_accum": 2, "loader": "stream"' in commands["sketcher"]
    assert '"grad_accum": 2, "loader": "memory"' in commands["unet"]
    assert "--overrides '{}'" in commands["vae_natural"], commands["vae_natural"]
    assert "loader" not in commands["lora_t1"] and "grad_accum" not in commands["lora_t1"]
