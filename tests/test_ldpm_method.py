"""LDPM as a registry method: each Table II switch changes exactly the code path it should."""

import numpy as np
import pytest
import torch

import ldpm.methods_ldpm as ml
from ldpm.methods import measure, method_stages, stage_dependencies
from ldpm.mri import mask_for_slice
from ldpm.models import MRControlNet, Sketcher, SwinIR, build_denoiser, build_vae, null_text_embedding
from conftest import TINY_DENOISER, TINY_VAE



@pytest.fixture
def parts():
    torch.manual_seed(0)
    sketcher = Sketcher(SwinIR({"embed_dim": 8, "depths": [1], "num_heads": [1], "window_size": 4}))
    unet = build_denoiser(TINY_DENOISER)
    mrcn = MRControlNet.from_denoiser(unet, null_text_embedding(unet)).eval()
    return sketcher.eval(), build_vae(TINY_VAE).eval(), mrcn


@pytest.fixture
def measurement():
    x = np.random.default_rng(0).random((1, 32, 32)).astype(np.float32)
    mask = mask_for_slice("v", 0, 32, 4)[None]
    return measure(x, mask), mask


def run(monkeypatch, parts, measurement, variant):
    sketcher, vae, mrcn = parts
    calls = {"sketcher": 0, "untuned_vae": 0, "dss": 0, "plain": 0}

    def load(checkpoints, vae_kind, sd_path):
        if vae_kind == "sd":
            calls["untuned_vae"] += 1
        return sketcher, vae, mrcn

    real_forward = Sketcher.forward

    def spy_forward(self, *a):
        calls["sketcher"] += 1
        return real_forward(self, *a)

    import ldpm.sampling.dual_stage as ds
    real_dss, real_plain = ds.dual_stage_sample, ds.plain_sample

    def spy_dss(*a, **k):
        calls["dss"] += 1
        return real_dss(*a, **k)

    def spy_plain(*a, **k):
        calls["plain"] += 1
        return real_plain(*a, **k)

    monkeypatch.setattr(ml, "load_ldpm", load)
    monkeypatch.setattr(Sketcher, "forward", spy_forward)
    monkeypatch.setattr(ds, "dual_stage_sample", spy_dss)
    monkeypatch.setattr(ds, "plain_sample", spy_plain)
    k_u, mask = measurement
    out = ml.ldpm_reconstruct(k_u, mask, {}, {"n_steps": 3, "p": 200, "guidance_scale": 0.1, "eps_mode": "rederive",
                                                   "slice_seeds": [7]}, variant=variant)
    assert out.shape == (1, 32, 32) and np.isfinite(out).all()
    return calls, out


def test_full_ldpm_uses_sketcher_mrvae_and_dss(monkeypatch, parts, measurement):
    calls, _ = run(monkeypatch, parts, measurement, "ldpm")
    assert calls == {"sketcher": 1, "untuned_vae": 0, "dss": 1, "plain": 0}


@pytest.mark.parametrize("variant,changed", [("ldpm_wo_mrvae", "untuned_vae"),
                                             ("ldpm_wo_skm", "sketcher"),
                                             ("ldpm_wo_dss", "dss")])
def test_each_ablation_switches_one_path(monkeypatch, parts, measurement, variant, changed):
    calls, _ = run(monkeypatch, parts, measurement, variant)
    full = {"sketcher": 1, "untuned_vae": 0, "dss": 1, "plain": 0}
    expected = dict(full)
    if changed == "untuned_vae":
        expected["untuned_vae"] = 1
    elif changed == "sketcher":
        expected["sketcher"] = 0
    else:
        expected.update(dss=0, plain=1)
    assert calls == expected


def test_sampling_is_seeded_per_slice(monkeypatch, parts, measurement):
    _, a = run(monkeypatch, parts, measurement, "ldpm")
    _, b = run(monkeypatch, parts, measurement, "ldpm")
    np.testing.assert_array_equal(a, b)


def test_stage_graph():
    assert method_stages("ldpm_wo_dss", with_sd=False) == ["sketcher", "vae", "controlnet", "denoiser"]
    assert method_stages("ldpm", with_sd=True) == ["sketcher", "vae", "controlnet"]
    assert stage_dependencies("controlnet", with_sd=False) == ["sketcher", "vae", "denoiser"]
    assert stage_dependencies("denoiser", with_sd=False) == ["vae"]
    assert method_stages("zero_filled", with_sd=False) == []


@pytest.mark.parametrize("variant", ["ldpm", "ldpm_wo_dss"])
def test_batched_sampling_equals_one_slice_at_a_time(parts, variant):
    """B slices sampled at once, each with its own seeded noise, give what B = 1 gives (eq. 10's
    residual is summed per sample, so no slice's guidance depends on the others)."""
    rng = np.random.default_rng(1)
    x = rng.random((4, 32, 32)).astype(np.float32) * np.array([1, 3, 0.5, 2], np.float32)[:, None, None]
    mask = np.stack([mask_for_slice("v", i, 32, 4) for i in range(4)])
    k_u = measure(x, mask)
    opts = {"n_steps": 4, "p": 500, "guidance_scale": 0.1, "eps_mode": "rederive",
            "slice_seeds": [7, 8, 9, 10]}
    one = ml.ldpm_reconstruct(k_u, mask, {}, {**opts, "batch_size": 1}, variant=variant, models=parts)
    four = ml.ldpm_reconstruct(k_u, mask, {}, {**opts, "batch_size": 4}, variant=variant, models=parts)
    assert np.abs(one).max() > 0
    assert np.abs(one - four).max() <= 1e-5 * max(1.0, float(np.abs(one).max()))
