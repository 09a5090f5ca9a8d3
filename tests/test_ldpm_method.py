"""LDPM as a registry method: each Table II switch changes exactly the code path it should."""

import numpy as np
import pytest
import torch

import ldpm.methods.ldpm as ml
from ldpm.methods import measure, method_stages, stage_dependencies
from ldpm.mri import mask_for_slice
from ldpm.models import MRControlNet, Sketcher, SwinIR, build_denoiser, build_vae, null_text_embedding
from conftest import TINY_DENOISER, TINY_VAE


def ldpm_images(*args, **kwargs) -> np.ndarray:
    """The images of :func:`ldpm.methods.ldpm.ldpm_reconstruct` (without its timings)."""
    return ml.ldpm_reconstruct(*args, **kwargs).images



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
    result = ml.ldpm_reconstruct(k_u, mask, {}, {"n_steps": 3, "p": 200, "guidance_scale": 0.1,
                                                 "eps_mode": "rederive", "n_samples": 1, "batch_size": 8,
                                                 "slice_seeds": [7]}, variant=variant)
    out = result.images
    assert out.shape == (1, 32, 32) and np.isfinite(out).all()
    assert set(result.timings) == {"sampling_seconds"} and result.timings["sampling_seconds"] > 0
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
    opts = {"n_steps": 4, "p": 500, "guidance_scale": 0.1, "eps_mode": "rederive", "n_samples": 2,
            "slice_seeds": [7, 8, 9, 10]}
    one = ldpm_images(k_u, mask, {}, {**opts, "batch_size": 1}, variant=variant, models=parts)
    four = ldpm_images(k_u, mask, {}, {**opts, "batch_size": 4}, variant=variant, models=parts)
    assert np.abs(one).max() > 0
    assert np.abs(one - four).max() <= 1e-5 * max(1.0, float(np.abs(one).max()))


# ------------------------------------------------ real checkpoints, loaded as `reconstruct` does

TINY_SWIN = {"embed_dim": 8, "depths": [1], "num_heads": [1], "window_size": 4}
OPTS = {"n_steps": 3, "p": 500, "guidance_scale": 0.1, "eps_mode": "rederive", "n_samples": 1,
        "batch_size": 8, "slice_seeds": [7, 8]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real training step of every LDPM stage, saved as the DAG saves them, plus a tiny
    stand-in of SD 2-1-base's diffusers layout (its UNet = our denoiser, its VAE = the natural
    one, a cached empty-prompt embedding): ``(folders, in-memory models, sd_path)``."""
    from conftest import smooth_slices
    from safetensors.torch import save_file

    from ldpm.models.controlnet import NULL_EMBEDDING_FILE
    from ldpm.train import train_controlnet, train_denoiser, train_sketcher, train_vae

    root = tmp_path_factory.mktemp("ldpm_ckpts")
    images = smooth_slices(disc=True)
    const = {"lr_schedule": "constant", "warmup": 0, "batch_size": 2, "crop": 32, "ckpt_every": 1}
    masks = {"acceleration": 4, "center_fraction": 0.08}
    kw = {"n_steps": 1, "log": False}
    vae_cfg = {**const, "model": TINY_VAE, "lr": 1e-3, "disc_lr": 1e-3,
               "disc": {"ndf": 8, "n_layers": 1}, "disc_start": 10}
    sk = train_sketcher(images, {**const, "model": TINY_SWIN, "lr": 1e-3, "masks": masks},
                        root / "sketcher", seed=1, **kw)
    vae = train_vae(images, vae_cfg, root / "vae", seed=2, **kw)
    natural = train_vae(images, vae_cfg, root / "vae_natural", seed=3, **kw)
    unet, null = train_denoiser(images, {**const, "model": TINY_DENOISER, "lr": 1e-3, "crop": None},
                                root / "denoiser", vae, seed=4, **kw)
    mrcn = train_controlnet(images, {**const, "lr": 1e-3, "masks": masks}, root / "controlnet",
                            sk, vae, unet, null, seed=5, **kw)
    sd = root / "sd21_stand_in"
    unet.save_pretrained(sd / "unet")
    natural.save_pretrained(sd / "vae")
    save_file({"null": null.contiguous()}, sd / NULL_EMBEDDING_FILE)
    folders = {name: root / name for name in ("sketcher", "vae", "vae_natural", "denoiser", "controlnet")}
    models = {"sketcher": sk.eval(), "vae": vae.eval(), "vae_natural": natural.eval(), "mrcn": mrcn.eval()}
    return folders, models, sd


@pytest.fixture(scope="module")
def two_slices():
    x = np.random.default_rng(2).random((2, 32, 32)).astype(np.float32)
    mask = np.stack([mask_for_slice("v", i, 32, 4) for i in range(2)])
    return measure(x, mask), mask


def test_loaded_checkpoints_reconstruct_as_the_trained_models_do(trained, two_slices):
    """``reconstruct`` loads the Sketcher, MR-VAE, denoiser and control branch from their
    folders and gives what the in-memory trained networks give; w/o MR-VAE loads the natural
    VAE instead (and changes the output)."""
    folders, m, _ = trained
    k_u, mask = two_slices
    loaded = ldpm_images(k_u, mask, folders, dict(OPTS), variant="ldpm")
    direct = ldpm_images(k_u, mask, {}, dict(OPTS), variant="ldpm",
                         models=(m["sketcher"], m["vae"], m["mrcn"]))
    np.testing.assert_allclose(loaded, direct, rtol=0, atol=1e-6)
    wo = ldpm_images(k_u, mask, folders, dict(OPTS), variant="ldpm_wo_mrvae")
    wo_direct = ldpm_images(k_u, mask, {}, dict(OPTS), variant="ldpm_wo_mrvae",
                            models=(m["sketcher"], m["vae_natural"], m["mrcn"]))
    np.testing.assert_allclose(wo, wo_direct, rtol=0, atol=1e-6)
    assert np.abs(wo - loaded).max() > 1e-3


def test_sd_layout_replaces_the_denoiser_and_the_untuned_vae(trained, two_slices):
    """With ``sd_path``, the frozen denoiser and its empty-prompt embedding come from SD's
    folder (no denoiser checkpoint needed) and w/o MR-VAE uses SD's VAE (no vae_natural)."""
    folders, m, sd = trained
    k_u, mask = two_slices
    no_prior = {k: v for k, v in folders.items() if k not in ("denoiser", "vae_natural")}
    opts = {**OPTS, "sd_path": str(sd)}
    np.testing.assert_allclose(ldpm_images(k_u, mask, no_prior, dict(opts), variant="ldpm"),
                               ldpm_images(k_u, mask, folders, dict(OPTS), variant="ldpm"),
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        ldpm_images(k_u, mask, no_prior, dict(opts), variant="ldpm_wo_mrvae"),
        ldpm_images(k_u, mask, {}, dict(OPTS), variant="ldpm_wo_mrvae",
                    models=(m["sketcher"], m["vae_natural"], m["mrcn"])), rtol=0, atol=1e-6)


@pytest.mark.parametrize("variant", ["ldpm", "ldpm_wo_skm", "ldpm_wo_dss"])
def test_scaling_the_measurement_scales_the_reconstruction(trained, two_slices, variant):
    """Every slice is normalised by its zero-filled maximum and scaled back: ``Phi(c k_u, M) =
    c Phi(k_u, M)``."""
    folders, _, _ = trained
    k_u, mask = two_slices
    base = ldpm_images(k_u, mask, folders, dict(OPTS), variant=variant)
    scaled = ldpm_images(37.5 * k_u, mask, folders, dict(OPTS), variant=variant)
    assert np.abs(base).max() > 0
    np.testing.assert_allclose(scaled, 37.5 * base, rtol=1e-4, atol=1e-5 * 37.5 * np.abs(base).max())


def test_the_sampler_receives_the_configured_settings(monkeypatch, trained, two_slices):
    import ldpm.sampling.dual_stage as ds

    seen = []
    real_init = ds.DualStageSampler.__init__

    def spy(self, *args, **kwargs):
        seen.append(kwargs)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(ds.DualStageSampler, "__init__", spy)
    folders, _, _ = trained
    k_u, mask = two_slices
    opts = {**OPTS, "n_steps": 4, "p": 321, "guidance_scale": 0.37, "eps_mode": "network"}
    ml.ldpm_reconstruct(k_u, mask, folders, opts, variant="ldpm_wo_dss")
    assert seen == [{"n_steps": 4, "p": 321, "guidance_scale": 0.37, "eps_mode": "network",
                     "use_dss": False}]
    with pytest.raises(Exception, match="inference.ldpm.p"):
        ml.ldpm_reconstruct(k_u, mask, folders, {k: v for k, v in OPTS.items() if k != "p"})
