"""DiffCode (seed 002): residual quantisation, the codebook bank, TARS, training, degradations,
CT/PET readers and the tables. Tiny tensors and a few steps: every test runs in seconds."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ldpm.config import deep_merge, load_config
from ldpm.studies.diffcode import config as dcc
from ldpm.studies.diffcode.data import read_ct_pairs, read_pet_pairs, read_task_pairs, task_availability
from ldpm.studies.diffcode.degradations import (degrade, degrade_test_slices, kspace_truncate,
                                                rician, undersample_magnitude)
from ldpm.studies.diffcode.evaluate import EvalSet, restore_test_set, summarize, volume_metrics
from ldpm.studies.diffcode.models import (TARM, CodebookBank, LatentRetrieval, Restorer,
                                          VQAutoencoder, residual_quantize, topk_gating)
from ldpm.studies.diffcode.report import make_table1, make_table2
from ldpm.studies.diffcode.checkpoints import PriorReference, load_stage
from ldpm.studies.diffcode.train import TaskData, load_frozen, stage_loss, task_batch, train_stage
from ldpm.errors import LdpmInputError
from ldpm.mri import fft2c, ifft2c

REPO = Path(__file__).resolve().parents[1]
MRI = ["mri_sr", "mri_recon", "mri_denoise"]
TINY = {"diffcode": {"overrides": {
    "model": {"naf_blocks": [1, 1], "channels": [4, 8], "codebook_size": 16, "code_dim": 8,
              "rq_depth": 2, "diffusion_steps": 4, "denoiser_hidden": 16, "experts": 3},
    "unet": {"chans": 4, "num_pool_layers": 2}, "swinir": {"embed_dim": 8, "depths": [1], "num_heads": [2]},
    "train": {"patch": 32, "batch_size": 4, "lr": 1e-2, "ckpt_every": 1000},
    "steps": {"bank": 40, "retrieval": 40, "restore": 40, "unet": 40, "swinir": 40}}}}


@pytest.fixture(scope="module")
def config():
    return deep_merge(load_config(), TINY)


@pytest.fixture(scope="module")
def phantoms() -> torch.Tensor:
    """8 slices [8, 1, 32, 32] in [0, 1]: shifted, scaled Shepp-Logan phantoms."""
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    base = resize(shepp_logan_phantom(), (48, 48), anti_aliasing=True)
    rng = np.random.default_rng(0)
    imgs = [base[t:t + 32, s:s + 32] * rng.uniform(0.6, 1.0) for t, s in rng.integers(0, 16, (8, 2))]
    x = torch.tensor(np.stack(imgs), dtype=torch.float32)[:, None]
    return x / x.amax(dim=(1, 2, 3), keepdim=True)


def task_data(config, phantoms) -> TaskData:
    cfg = dcc.diffcode_stage_config(config, "bank")
    return TaskData(cfg["tasks"], cfg["levels"], phantoms)


# ----------------------------------------------------------------------- residual quantisation

def test_residual_quantisation_reduces_the_residual_at_each_depth():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 8, 4, 4, generator=g)
    codebook = torch.randn(64, 8, generator=g) * 0.5 ** torch.arange(64).div(16).floor()[:, None]
    codebook[0] = 0  # with a zero item no vector's residual can grow
    out = residual_quantize(z, codebook.expand(2, -1, -1), depth=4)
    norms = out.residual_norms
    assert out.codes.shape == (2, 4, 4, 4)
    assert torch.all(norms[1:] < norms[:-1]), norms  # strictly smaller at every depth
    # q is the sum of the chosen items: z - q is the last residual, and per vector it never grew
    r = (z - out.q).flatten(2).transpose(1, 2).norm(dim=-1)
    assert torch.all(r <= z.flatten(2).transpose(1, 2).norm(dim=-1) + 1e-6)
    assert torch.allclose(r.mean(), norms[-1], atol=1e-5)


# ------------------------------------------------------------------------------ codebook bank

def _prior(config, codebook: str) -> PriorReference:
    cfg = dcc.diffcode_stage_config(config, "bank")
    torch.manual_seed(0)
    vq = VQAutoencoder(cfg["model"], 3 if codebook == "bank" else 1).eval()
    retr = LatentRetrieval(dcc.diffcode_stage_config(config, "retrieval")["model"], "diffusion").eval()
    return PriorReference({"tasks": cfg["tasks"], "codebook": codebook}, vq, retr)


def test_each_task_uses_its_own_codebook(config):
    prior = _prior(config, "bank")
    lq = torch.rand(1, 1, 32, 32).expand(3, -1, -1, -1).contiguous()  # the same image for every task
    tasks = torch.arange(3)
    gens = lambda: [torch.Generator().manual_seed(7) for _ in range(3)]  # noqa: E731
    before = prior(lq, tasks, gens())
    assert prior.codebook_index(tasks).tolist() == [0, 1, 2]
    with torch.no_grad():
        prior.vq.bank.codebooks[1].mul_(-3.0).add_(1.0)  # change task 1's codebook only
    after = prior(lq, tasks, gens())
    assert torch.equal(before[0], after[0]) and torch.equal(before[2], after[2])
    assert not torch.allclose(before[1], after[1])


def test_single_codebook_is_shared_by_all_tasks(config):
    prior = _prior(config, "single")
    assert prior.codebook_index(torch.arange(3)).tolist() == [0, 0, 0]
    lq = torch.rand(1, 1, 32, 32).expand(3, -1, -1, -1).contiguous()
    gens = lambda: [torch.Generator().manual_seed(7) for _ in range(3)]  # noqa: E731
    before = prior(lq, torch.arange(3), gens())
    with torch.no_grad():
        prior.vq.bank.codebooks[0].mul_(-3.0).add_(1.0)
    after = prior(lq, torch.arange(3), gens())
    assert all(not torch.allclose(before[i], after[i]) for i in range(3))


# ----------------------------------------------------------------------------------- TARS

@pytest.mark.parametrize("k", [1, 2, 3])
def test_tars_gating_selects_exactly_k_experts(config, k):
    v = torch.randn(6, 4, generator=torch.Generator().manual_seed(k))
    w = topk_gating(v, k)
    assert ((w > 0).sum(1) == k).all() and torch.allclose(w.sum(1), torch.ones(6))
    assert torch.equal(torch.sort(w.topk(k, 1).indices, 1).values, torch.sort(v.topk(k, 1).indices, 1).values)
    # inside the restorer: every image routes through exactly k of the E experts
    model = {**dcc.diffcode_stage_config(config, "restore")["model"], "experts": 4}
    net = Restorer(model, n_tasks=3, with_prior=True, tars=True, top_k=k)
    _, weights = net.gating(torch.rand(5, 1, 32, 32))
    assert weights.shape == (5, 4) and ((weights > 0).sum(1) == k).all()


def test_tarm_runs_only_the_selected_experts():
    torch.manual_seed(0)
    tarm = TARM(4, 3)
    for e in tarm.experts:
        torch.nn.init.normal_(e.gamma)
    f = torch.randn(2, 4, 8, 8)
    w = torch.tensor([[0.0, 0.7, 0.3], [1.0, 0.0, 0.0]])
    calls = []
    for i, e in enumerate(tarm.experts):
        e.register_forward_hook(lambda m, a, o, i=i: calls.append((i, a[0].shape[0])))
    out = tarm(f, w)
    assert sorted(calls) == [(0, 1), (1, 1), (2, 1)]  # each expert saw only its sample
    expect0 = tarm.experts[0](f[1:])
    expect1 = 0.7 * tarm.experts[1](f[:1]) + 0.3 * tarm.experts[2](f[:1])
    assert torch.allclose(out[1:], expect0, atol=1e-6) and torch.allclose(out[:1], expect1, atol=1e-6)


# ----------------------------------------------------------------------------------- training

def fixed_batch_loss(cfg: dict, folder: Path, deps: dict, data: TaskData) -> float:
    """The stage's loss with the weights in ``folder`` on 4 fixed batches (fixed noise too)."""
    _, modules = load_stage(folder)
    net = next(iter(modules.values()))
    frozen_vq, frozen_prior = load_frozen(cfg, deps)
    losses = []
    for i in range(4):
        g = torch.Generator().manual_seed(1000 + i)
        with torch.no_grad():
            losses.append(stage_loss(cfg, net, task_batch(data, 4, 32, g), g, frozen_vq, frozen_prior)[0].item())
    return float(np.mean(losses))


def test_a_few_training_steps_lower_every_stage_loss(config, phantoms, tmp_path):
    """Each stage's loss on fixed batches after 30 steps vs after its first step (with lr = 0
    the two are equal and this fails)."""
    data = task_data(config, phantoms)
    stages = ["bank", "retrieval", "retrieval_direct", "restore", "restore_v1", "unet", "swinir"]
    deps = {s: tmp_path / s for s in stages}
    for stage in stages:
        cfg = dcc.diffcode_stage_config(config, stage)
        meta = train_stage(cfg, "unused.csv", tmp_path / stage, seed=0, deps=deps, log=False, data=data)
        assert meta["steps_done"] == cfg["n_steps"] and (tmp_path / stage / "final" / "model.safetensors").is_file()
        train_stage({**cfg, "n_steps": 1}, "unused.csv", tmp_path / f"{stage}_1", seed=0, deps=deps,
                    log=False, data=data)
        after_1 = fixed_batch_loss(cfg, tmp_path / f"{stage}_1", deps, data)
        after_n = fixed_batch_loss(cfg, tmp_path / stage, deps, data)
        assert after_n < 0.95 * after_1, (stage, after_1, after_n)
    _, modules = load_stage(tmp_path / "restore", expect="restore")
    assert not any(p.requires_grad for p in modules["restorer"].parameters())


def test_bank_training_resumes_bit_for_bit(config, phantoms, tmp_path):
    data, cfg = task_data(config, phantoms), {**dcc.diffcode_stage_config(config, "bank"), "n_steps": 4}
    train_stage(cfg, "unused.csv", tmp_path / "a", seed=3, log=False, data=data)
    train_stage(cfg, "unused.csv", tmp_path / "b", seed=3, log=False, data=data, stop_after=2)
    assert not (tmp_path / "b" / "final").exists()
    train_stage(cfg, "unused.csv", tmp_path / "b", seed=3, log=False, data=data)
    a = load_stage(tmp_path / "a")[1]["vq"].state_dict()
    b = load_stage(tmp_path / "b")[1]["vq"].state_dict()
    assert "bank.usage" in a and all(torch.equal(a[k], b[k]) for k in a)  # usage resumes too
    log = pd.read_csv(tmp_path / "a" / "log.csv")
    used = [c for c in log.columns if c.startswith("perplexity_")]
    assert used and set(used) <= {f"perplexity_{t}" for t in cfg["tasks"]}
    assert ((log[used].fillna(1.0) >= 1.0) & (log[used].fillna(1.0) <= cfg["model"]["codebook_size"])).all().all()


def test_a_dead_codebook_item_is_reseeded_from_the_batch_latents():
    """Items no assignment reaches lose usage (EMA, decay 0.9) until they fall below the threshold
    and are replaced by latent vectors of the batch; the used item, and a codebook the batch did
    not use, are kept. Perplexity counts the items in effective use."""
    bank = CodebookBank(2, 4, 3, depth=1, dead_code_threshold=0.5)
    with torch.no_grad():
        bank.codebooks.zero_()
        bank.codebooks[0, 1:] = 100.0  # far from every latent: never the nearest item
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 3, 2, 2, generator=g)
    idx = torch.tensor([0, 0])
    for step in range(7):  # usage 0.9^n: 0.478 < 0.5 at the 7th step
        rq = bank(z, idx)
        assert rq.codes.eq(0).all()
        perplexity = bank.reseed_dead(z, idx, rq.codes, g)
        assert perplexity == {0: pytest.approx(1.0)}
        if step < 6:
            assert (bank.codebooks[0, 1:] == 100.0).all()
    vectors = z.flatten(2).transpose(1, 2).reshape(-1, 3)
    for item in (1, 2, 3):
        assert any(torch.equal(bank.codebooks[0, item], v) for v in vectors), item
    assert (bank.usage[0, 1:] == 1.0).all() and (bank.codebooks[0, 0] == 0).all()
    assert (bank.codebooks[1] == 0).all() and (bank.usage[1] == 1.0).all()  # not in the batch
    off = CodebookBank(1, 4, 3, depth=1)  # threshold 0: never re-seeded
    with torch.no_grad():
        off.codebooks.zero_()
        off.codebooks[0, 1:] = 100.0
    for _ in range(50):
        off.reseed_dead(z, torch.tensor([0, 0]), off(z, torch.tensor([0, 0])).codes, g)
    assert (off.codebooks[0, 1:] == 100.0).all()


def test_restore_refuses_a_bank_of_other_tasks(config, phantoms, tmp_path):
    data = task_data(config, phantoms)
    train_stage({**dcc.diffcode_stage_config(config, "bank"), "n_steps": 1}, "x", tmp_path / "bank", 0, log=False, data=data)
    cfg = {**dcc.diffcode_stage_config(config, "retrieval"), "n_steps": 1, "tasks": ["mri_sr"]}
    with pytest.raises(LdpmInputError, match="trained for tasks"):
        train_stage(cfg, "x", tmp_path / "r", 0, deps={"bank": tmp_path / "bank"}, log=False,
                    data=TaskData(["mri_sr"], data.levels, phantoms))


# ------------------------------------------------------------------------------ degradations

def test_sr_keeps_only_the_centre_of_kspace():
    n = torch.arange(32, dtype=torch.float32)
    low = 1 + 0.5 * torch.cos(2 * torch.pi * 3 * n / 32).expand(32, 32)   # |f| = 3 < 32/4/2
    high = 1 + 0.5 * torch.cos(2 * torch.pi * 10 * n / 32).expand(32, 32)  # |f| = 10: outside
    assert torch.allclose(kspace_truncate(low, 4), low, atol=1e-5)
    assert torch.allclose(kspace_truncate(high, 4), torch.ones(32, 32), atol=1e-5)
    # exactly the central 8 x 8 of the 32 x 32 k-space (rows/columns 12..19 around DC at 16)
    x = torch.rand(32, 32, generator=torch.Generator().manual_seed(0))
    centre = torch.zeros(32, 32)
    centre[12:20, 12:20] = 1
    expect = ifft2c(fft2c(x.to(torch.complex64)) * centre).abs()
    assert torch.allclose(kspace_truncate(x, 4), expect, atol=1e-6)
    assert not torch.allclose(kspace_truncate(x, 2), expect, atol=1e-3)


def test_recon_and_noise_degradations_are_seeded_and_correct():
    x = torch.rand(32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(undersample_magnitude(x, torch.ones(32)), x, atol=1e-5)
    levels = {"sr_scale": 4, "denoise_sigma": 0.1, "acceleration": 8, "center_fraction": 0.04}
    a = degrade("mri_recon", x, levels, torch.Generator().manual_seed(5))
    b = degrade("mri_recon", x, levels, torch.Generator().manual_seed(5))
    c = degrade("mri_recon", x, levels, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    zero = rician(torch.zeros(256, 256), 0.1, torch.Generator().manual_seed(0))
    assert zero.mean().item() == pytest.approx(0.1 * np.sqrt(np.pi / 2), rel=0.02)  # Rayleigh mean
    with pytest.raises(LdpmInputError, match="not a simulated MRI task"):
        degrade("ct_denoise", x, levels, torch.Generator())


def test_test_set_degradations_use_the_shard_masks_and_do_not_depend_on_order():
    from ldpm.methods import measure

    rng = np.random.default_rng(0)
    targets = rng.random((4, 32, 32)).astype(np.float32)
    masks = (rng.random((4, 32)) < 0.3).astype(np.float32)
    vols, slices, vmax = ["v0", "v0", "v1", "v1"], np.array([0, 1, 0, 1]), np.ones(4, np.float32)
    levels = {"sr_scale": 4, "denoise_sigma": 0.05, "acceleration": 8, "center_fraction": 0.04}
    recon = degrade_test_slices("mri_recon", targets, masks, vols, slices, vmax, levels, 11)
    ldpm_zero_filled = np.abs(ifft2c(measure(targets, masks)))  # what LDPM is measured from
    np.testing.assert_allclose(recon, ldpm_zero_filled, atol=1e-5)
    noisy = degrade_test_slices("mri_denoise", targets, masks, vols, slices, vmax, levels, 11)
    order = [2, 0, 3, 1]
    shuffled = degrade_test_slices("mri_denoise", targets[order], masks[order], [vols[i] for i in order],
                                   slices[order], vmax[order], levels, 11)
    np.testing.assert_array_equal(shuffled, noisy[order])
    assert not np.array_equal(noisy, degrade_test_slices("mri_denoise", targets, masks, vols, slices,
                                                         vmax, levels, 12))


# ------------------------------------------------------------------------------ CT and PET

def test_ct_and_pet_without_a_path_are_na_with_the_reason(config):
    avail = task_availability(config["diffcode"])
    assert avail["mri_sr"] is None
    assert "no data configured" in avail["ct_denoise"] and "ct_path" in avail["ct_denoise"]
    assert "no data configured" in avail["pet_synthesis"] and "pet_path" in avail["pet_synthesis"]
    assert dcc.available_tasks(config["diffcode"]) == MRI
    with pytest.raises(LdpmInputError, match="no data configured"):
        read_task_pairs("ct_denoise", config["diffcode"])


def test_ct_and_pet_bad_paths_stop_with_a_clear_error(tmp_path):
    with pytest.raises(LdpmInputError, match="ct_path.*is not a folder"):
        read_ct_pairs(tmp_path / "nope")
    (tmp_path / "p1" / "quarter_1mm").mkdir(parents=True)
    (tmp_path / "p1" / "full_1mm").mkdir()
    (tmp_path / "p1" / "quarter_1mm" / "a.dcm").write_text("not dicom")
    with pytest.raises(LdpmInputError, match=r"a\.dcm: is not a readable DICOM"):
        read_ct_pairs(tmp_path)
    (tmp_path / "pet" / "s1").mkdir(parents=True)
    with pytest.raises(LdpmInputError, match="has no low_dose.nii"):
        read_pet_pairs(tmp_path / "pet")


def _write_dicom(path: Path, pixels: np.ndarray, z: float) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.ImagePositionPatient = [0, 0, z]
    ds.PixelData = pixels.astype(np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_ct_dicom_and_pet_nifti_pairs_are_read(tmp_path):
    import nibabel as nib

    for dose, offset in (("quarter_dose", 50), ("full_dose", 0)):
        folder = tmp_path / "ct" / "L067" / dose
        folder.mkdir(parents=True)
        for z in (2.0, 1.0):  # written out of order: read back sorted by position
            _write_dicom(folder / f"{z}.dcm", np.full((8, 6), 1024 + 100 * z + offset), z)
    (ct,) = read_ct_pairs(tmp_path / "ct")
    assert ct.name == "L067" and ct.hq.shape == (2, 8, 6)
    np.testing.assert_allclose(ct.hq[:, 0, 0], [(100 + 1024) / 4096, (200 + 1024) / 4096], rtol=1e-6)
    assert np.all(ct.lq > ct.hq)
    vol = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
    (tmp_path / "pet" / "s1").mkdir(parents=True)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "pet" / "s1" / "full_dose.nii.gz")
    nib.save(nib.Nifti1Image(vol / 2, np.eye(4)), tmp_path / "pet" / "s1" / "low_dose.nii")
    (pet,) = read_pet_pairs(tmp_path / "pet")
    assert pet.hq.shape == (3, 4, 5) and np.allclose(pet.hq[1], vol[..., 1]) and np.allclose(pet.lq, pet.hq / 2)


# ---------------------------------------------------------------------------- evaluation, tables

def test_evaluation_scores_the_lq_input_and_keeps_na_reasons(config):
    rng = np.random.default_rng(0)
    hq = rng.random((4, 16, 16)).astype(np.float32) + 0.5
    test = EvalSet("mri_sr", hq + 0.01, hq, ["a", "a", "b", "b"], np.array([0, 1, 0, 1]))
    from ldpm.studies.diffcode.evaluate import MethodRunner

    pred = restore_test_set(MethodRunner("lq", {}), test, seed=0)
    np.testing.assert_allclose(pred, hq + 0.01, rtol=1e-6)
    pv = volume_metrics(test, pred)
    assert list(pv["volume"]) == ["a", "b"] and np.allclose(pv["rmse"], 0.01 / hq.reshape(2, -1).max(1), rtol=1e-4)
    cfg = dcc.evaluation_config(config, "lq")
    s = summarize("lq", "LQ input", pv.assign(method="lq"), cfg)
    assert s["tasks"]["mri_sr"]["metrics"]["psnr"]["value"] == pytest.approx(pv["psnr"].mean())
    assert s["tasks"]["mri_recon"]["metrics"]["psnr"]["value"] is None  # no rows for it here
    assert "no data configured" in s["tasks"]["ct_denoise"]["metrics"]["ssim"]["reason"]


def test_tars_routes_the_prior_from_the_lq_image_alone(config, tmp_path):
    """DiffCode's prior takes the codebook TARS's classifier predicts from the LQ image: the
    output does not depend on the task id it is handed (only the oracle row's does), and the
    routing accuracy is the share of slices routed to their own task."""
    from ldpm.studies.diffcode.evaluate import MethodRunner
    from ldpm.studies.diffcode.checkpoints import build_modules
    from ldpm.studies.diffcode.train import save_stage

    torch.manual_seed(0)
    for stage in dcc.method_stages("diffcode"):
        cfg = dcc.diffcode_stage_config(config, stage)
        modules = build_modules(cfg)
        if "restorer" in modules:  # its last conv starts at zero (output = LQ): let ref show
            torch.nn.init.normal_(modules["restorer"].ending.weight, std=0.5)
        (tmp_path / stage / "final").mkdir(parents=True)
        save_stage(tmp_path / stage / "final", cfg, modules)
    dirs = {s: tmp_path / s for s in dcc.method_stages("diffcode")}
    routed, oracle = MethodRunner("diffcode", dirs), MethodRunner(dcc.ORACLE, dirs)
    lq = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(4)]  # noqa: E731
    predicted = routed.net.gating(lq)[0].argmax(1)
    outs = {t: routed(lq, torch.full((4,), t), gens()) for t in range(3)}
    assert all(torch.equal(outs[0], outs[t]) for t in (1, 2))  # the task id is not read
    by_id = {t: oracle(lq, torch.full((4,), t), gens()) for t in range(3)}
    assert not torch.equal(by_id[0], by_id[1])  # the codebooks differ: the id would matter
    for i, t in enumerate(predicted.tolist()):  # routed = the oracle given the predicted task
        torch.testing.assert_close(outs[0][i], by_id[t][i], rtol=0, atol=0)
    acc = routed.routing_accuracy()
    assert acc["overall"] == pytest.approx(float((predicted[None] == torch.arange(3)[:, None]).float().mean()))
    assert oracle.routing_accuracy() is None and "diffcode_oracle" in dcc.methods(config["diffcode"])


def _summary(method: str, config, psnr: float) -> dict:
    rows = [{"method": method, "task": t, "volume": f"v{i}", "n_slices": 2, "psnr": psnr + i + j,
             "ssim": 0.5 + 0.01 * i, "rmse": 0.1 - 0.01 * i} for j, t in enumerate(MRI) for i in range(2)]
    return summarize(method, dcc.METHOD_NAMES[method], pd.DataFrame(rows), dcc.evaluation_config(config, method))


def test_tables_render_values_paper_columns_and_na_cells(config, tmp_path):
    metrics = tmp_path / "diffcode" / "metrics"
    metrics.mkdir(parents=True)
    for i, m in enumerate(["lq", "diffcode", "v1", "unet"]):  # v2, v3, ... were "not run"
        (metrics / f"{m}.json").write_text(json.dumps(_summary(m, config, 20.0 + i)))
    paper = REPO / "config" / "paper_values_diffcode.yaml"
    levels = dcc.levels(config["diffcode"], config["masks"])
    csv1, md1, _ = make_table1(tmp_path, ["lq", "diffcode", "unet", "swinir"], config["diffcode"]["tasks"],
                               levels, paper)
    t1 = pd.read_csv(csv1).set_index("method")
    saved = json.loads((metrics / "diffcode.json").read_text())
    assert t1.loc["diffcode", "mri_sr_psnr"] == pytest.approx(saved["tasks"]["mri_sr"]["metrics"]["psnr"]["value"])
    assert t1.loc["diffcode", "mri_sr_psnr_paper"] == pytest.approx(32.0009)
    assert pd.isna(t1.loc["unet", "mri_sr_psnr_paper"]) and "mri_recon_psnr_paper" not in t1.columns
    text = md1.read_text()
    assert "MRI SR 4×" in text and "PSNR ↑ (paper)" in text and "Δ PSNR" in text and "Δ RMSE" not in text
    assert "n/a: no data configured (set diffcode.ct_path)" in text
    assert "SwinIR (all-in-one)" in text and "not run: add it to diffcode.baselines" in text
    csv2, md2, tex2 = make_table2(tmp_path, paper)
    t2 = pd.read_csv(csv2)
    assert list(t2["method"]) == ["v1", "v2", "v3", "diffcode", "top3", "top2", "single", "diffcode"]
    text2 = md2.read_text()
    assert "(a) Component analysis" in text2 and "not run: add it to diffcode.variants" in text2
    assert "34.6186" in text2 and r"\checkmark" in tex2.read_text()


# ------------------------------------------------------------------------------ presets

def test_override_schema_has_exactly_the_presets_keys_and_admits_their_values():
    """``diffcode.overrides.<block>`` takes each key of the presets' blocks and no other, and
    every preset value passes the schema as an override."""
    from ldpm.config import load_schema, validate_config
    from ldpm.studies.diffcode.presets import PRESETS

    blocks = load_schema()["properties"]["diffcode"]["properties"]["overrides"]["properties"]
    base = load_config()
    for name, preset in PRESETS.items():
        assert set(blocks) == set(preset), name
        for block, values in preset.items():
            assert set(blocks[block]["properties"]) == set(values), (name, block)
        validate_config(deep_merge(base, {"diffcode": {"overrides": preset}}), name, check_paths=False)


def test_train_preset_chooses_the_sizes_and_overrides_set_single_keys():
    from ldpm.studies.diffcode.presets import PAPER

    base = load_config()
    paper = deep_merge(base, {"train": {"preset": "paper"}})
    cfg = dcc.diffcode_stage_config(paper, "bank")
    assert cfg["model"]["codebook_size"] == PAPER["model"]["codebook_size"] == 8192
    assert cfg["n_steps"] == PAPER["steps"]["bank"] and cfg["patch"] == PAPER["train"]["patch"]
    tuned = dcc.diffcode_stage_config(deep_merge(paper, {"diffcode": {"overrides": {
        "model": {"code_dim": 16}, "steps": {"bank": 7}}}}), "bank")
    assert tuned["model"] == {**cfg["model"], "code_dim": 16} and tuned["n_steps"] == 7
    assert {k: v for k, v in tuned.items() if k not in ("model", "n_steps")} == \
        {k: v for k, v in cfg.items() if k not in ("model", "n_steps")}
    with pytest.raises(LdpmInputError, match="diffcode.steps.*unknown key"):
        validate_config_of({"diffcode": {"steps": {"bank": 7}}})  # the sizes are not config keys
    with pytest.raises(LdpmInputError, match="diffcode.overrides.model.codebook_sise.*unknown key"):
        validate_config_of({"diffcode": {"overrides": {"model": {"codebook_sise": 8}}}})


def validate_config_of(override: dict) -> dict:
    from ldpm.config import validate_config

    return validate_config(deep_merge(load_config(), override), "my.yaml", check_paths=False)


# ------------------------------------------------------------------------------ stage graph

def test_stage_graph_shares_the_bank_and_retrieval(config):
    dc = {**config["diffcode"], "variants": ["v1", "v2", "v3", "single", "top2", "top3"]}
    assert dcc.methods(dc) == ["lq", "diffcode", "diffcode_oracle", "v1", "v2", "v3", "single", "top2",
                               "top3", "unet", "swinir"]
    assert dcc.method_stages("diffcode") == ["bank", "retrieval", "restore"]
    assert dcc.method_stages("diffcode_oracle") == dcc.method_stages("diffcode")
    assert dcc.method_stages("top3") == ["bank", "retrieval", "restore_top3"]
    assert dcc.method_stages("v3") == ["bank", "retrieval_direct", "restore_v3"]
    assert dcc.method_stages("single") == ["bank_single", "retrieval_single", "restore_single"]
    assert dcc.method_stages("v1") == ["restore_v1"] and dcc.method_stages("lq") == []
    assert len(dcc.all_stages(dc)) == 14
    cfg = dcc.diffcode_stage_config(config, "restore_top2")
    assert cfg["variant"]["top_k"] == 2 and cfg["n_steps"] == TINY["diffcode"]["overrides"]["steps"]["restore"]
    with pytest.raises(LdpmInputError, match="unknown"):
        dcc.stage_kind("restore_v9")


def test_disabled_diffcode_adds_nothing_to_the_dag(tmp_path):
    from conftest import SNAKEMAKE as snakemake
    cfg = tmp_path / "off.yaml"
    cfg.write_text("diffcode: {enabled: false}\nlora: {enabled: false}\n")
    proc = subprocess.run([snakemake, "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
                           "--configfile", str(cfg), "-n", "all"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "diffcode" not in proc.stdout and "rule all" in proc.stdout + proc.stderr


def test_curves_cover_every_stage_the_methods_use(config, tmp_path):
    from ldpm.studies.diffcode.report import curve_stages, make_curves

    methods = dcc.methods(config["diffcode"])
    assert curve_stages(methods) == [f"diffcode_{s}" for s in dcc.all_stages(config["diffcode"])]
    assert curve_stages(["lq"]) == []
    (tmp_path / "models" / "diffcode_bank" / "final").mkdir(parents=True)
    log = pd.DataFrame({"step": range(30), "loss": np.linspace(3.0, 1.0, 30), "perplexity_0": 1.0})
    log.to_csv(tmp_path / "models" / "diffcode_bank" / "log.csv", index=False)
    png, losses = make_curves(tmp_path, ["diffcode"])
    assert png == tmp_path / "figures" / "diffcode_curves.png" and png.is_file()
    losses = losses.set_index("stage")
    assert list(losses.index) == curve_stages(["diffcode"])
    assert bool(losses.loc["diffcode_bank", "fell"]) and losses.loc["diffcode_bank", "steps"] == 30
    assert losses["missing"].drop("diffcode_bank").str.contains("no log.csv").all()
