"""Data-parallel training: torchrun ranks on the CPU (Gloo) average gradients and agree on weights."""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ldpm.errors import LdpmInputError
from ldpm.device import resolve_device
from ldpm.seeding import step_generator
from ldpm.train.runtime import Runtime

WORKER = Path(__file__).parent / "helpers" / "ddp_worker.py"
STAGE_WORKER = Path(__file__).parent / "helpers" / "ddp_stage_worker.py"


def _torchrun(worker: Path, out: Path) -> list[dict]:
    """Run ``worker out`` on two CPU ranks; the ``rank<r>.json`` each wrote."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node=2", str(worker), str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_one_process_runtime_is_the_plain_loop():
    rt = Runtime()
    assert not rt.distributed and rt.is_main and rt.local_batch(6) == 6
    assert torch.equal(torch.rand(4, generator=rt.generator(5, 7)),
                       torch.rand(4, generator=step_generator(5, 7)))
    lin = torch.nn.Linear(2, 1)
    replicas = rt.replicate(lin)
    assert replicas.ddp is None  # nothing wrapped: the loss function is called as it is
    x = torch.ones(1, 2)
    with replicas.no_sync():
        out = replicas(lambda v, scale=1.0: lin(v) * scale, x, scale=2.0)
    assert torch.equal(out, lin(x) * 2.0)


def test_ranks_draw_different_batches_and_split_the_batch_size():
    r0, r1 = Runtime(rank=0, world_size=2), Runtime(rank=1, world_size=2)
    assert r0.local_batch(8) == 4
    assert not torch.equal(torch.rand(4, generator=r0.generator(0, 3)),
                           torch.rand(4, generator=r1.generator(0, 3)))
    with pytest.raises(LdpmInputError, match="multiple of 2"):
        r0.local_batch(5)


def test_device_choice():
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(LdpmInputError, match="no GPU"):
            resolve_device("cuda")
    with pytest.raises(LdpmInputError, match="unknown device"):
        resolve_device("tpu")


def test_two_torchrun_ranks_train_one_model(tmp_path):
    ranks = _torchrun(WORKER, tmp_path)
    for res in ranks:
        assert res["world"] == 2
        assert res["a"] == [1.5] * 3           # (1 + 2) / 2
        assert res["b"] == [0.5] * 3           # rank 0's gradient, rank 1 counts as zero
        assert res["c_is_none"]                # no rank had one: the optimizer skips it
    # gradients averaged every step: both ranks end with the same weights
    assert ranks[0]["params_sum"] == ranks[1]["params_sum"]
    assert ranks[0]["params_abs"] == ranks[1]["params_abs"]
    meta = json.loads((tmp_path / "sketcher" / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["steps_done"] == 3
    assert (tmp_path / "sketcher" / "final" / "model.safetensors").is_file()
    rows = (tmp_path / "sketcher" / "log.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3                  # one row per step, written once (rank 0)


@pytest.fixture(scope="module")
def stage_ranks(tmp_path_factory):
    """Two ranks of ``helpers/ddp_stage_worker.py``: gradient checks, then the ``vae`` stage
    (discriminator on from step 1, two micro-batches) and the ``score_mri`` baseline."""
    out = tmp_path_factory.mktemp("ddp_stages")
    return out, _torchrun(STAGE_WORKER, out)


def test_ddp_gradient_is_the_mean_of_the_ranks_gradients(stage_ranks):
    """The ranks draw different samples (``Runtime.generator``), so the first step of 2 ranks
    is not the first step of 1 rank; what DDP leaves in ``.grad`` is checked against the mean
    of the gradients each rank computes alone on its own micro-batches."""
    _, ranks = stage_ranks
    for check in ("sketcher_accum1", "sketcher_accum2", "vae_gan_accum2"):
        for res in ranks:
            c = res[check]
            assert c["ranks_differ"] > 0 and c["local_is_not_mean"] > 0, check  # a real average
            assert c["max_diff"] <= 1e-6 * c["scale"], (check, c)


def test_two_ranks_train_a_gan_stage_and_a_baseline_to_the_same_weights(stage_ranks):
    out, (r0, r1) = stage_ranks
    assert set(r0["held"]) == {"vae", "score_mri"}
    assert r0["held"] == r1["held"]  # every module's parameters, as each rank holds them
    assert set(r0["held"]["vae"]) >= {"vae", "disc"}
    for stage in ("vae", "score_mri"):
        with open(out / stage / "log.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == json.loads((out / stage / "meta.json").read_text())["n_steps"]
        assert all(math.isfinite(float(v)) for row in rows for k, v in row.items() if k != "step")
    with open(out / "vae" / "log.csv") as f:
        vae_rows = list(csv.DictReader(f))
    assert all(float(r["d_loss"]) > 0 and float(r["gan_weight"]) > 0 for r in vae_rows[1:])


def test_two_ranks_resume_bit_for_bit(stage_ranks):
    """A 2-rank Sketcher run (two micro-batches) stopped after one step and resumed ends with
    the weights of an uninterrupted one."""
    _, (r0, _) = stage_ranks
    assert r0["resume_equal"] is True


def test_launcher_with_two_gpus_trains_a_stage_data_parallel(make_fastmri_file, tmp_path):
    """The train rule's command with ``--gpus 2``: torchrun, two ranks, one checkpoint (CPU here)."""
    from ldpm.data.store import build_manifest, preprocess_volume

    stores = []
    for i, pid in enumerate(("p001", "p002", "p003")):
        raw = make_fastmri_file(f"file_brain_AXT2_200_{6002000 + i}.h5", patient_id=pid, seed=i)
        stores.append(preprocess_volume(raw, tmp_path / f"store{i}.h5", crop_size=16,
                                        drop_last_slices=0))
    manifest = tmp_path / "manifest.csv"
    build_manifest(stores, manifest, {"train": 0.7, "val": 0.0, "test": 0.3}, seed=0)
    overrides = {"model": {"embed_dim": 8, "depths": [1], "num_heads": [2], "window_size": 8},
                 "batch_size": 2, "crop": 16, "n_steps": 2, "ckpt_every": 1}
    out = tmp_path / "sketcher"
    proc = subprocess.run(
        [sys.executable, "-m", "ldpm.launch", "--gpus", "2", "--", "--stage", "sketcher",
         "--manifest", str(manifest), "--out-dir", str(out), "--overrides", json.dumps(overrides),
         "--seed", "0", "--device", "cpu"],
        capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["device"] == "cpu" and meta["steps_done"] == 2
    assert (out / "final" / "model.safetensors").is_file()
