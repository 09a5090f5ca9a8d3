"""LoRA on LDPM's denoiser: only adapter (and control) weights train, exact save/load,
weighted combination of two adapters, the stage/method graph, and the study's table."""

import copy
import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from ldpm.methods import (method_options, method_stages, reconstruct_shard, stage_dependencies,
                          timing_path)
from ldpm.methods.graph import step_variant
from ldpm.models import MRControlNet, Sketcher, SwinIR, build_denoiser, build_vae, null_text_embedding
from ldpm.sampling import base_alphas_cumprod
from ldpm.train.controlnet import controlnet_loss
from ldpm.studies.lora.graph import own_stages, study_methods
from ldpm.studies.lora.models import (LORA_WEIGHTS_FILE, adapter_parameters, add_lora, combine_adapters,
                                      load_lora, save_lora)
from ldpm.studies.lora.train import DEFAULT_CONFIGS as LORA_PRESETS, train_lora, train_lora_eps
from conftest import TINY_DENOISER, TINY_VAE

CFG = {"rank": 2, "alpha": None, "targets": ["to_q", "to_k", "to_v", "to_out.0"], "lora_lr": 1e-2,
       "lr": 1e-3, "batch_size": 2, "crop": None, "n_steps": 3, "epochs": None, "ckpt_every": 2,
       "masks": {"acceleration": 4, "center_fraction": 0.08}}


def tiny_unet():
    torch.manual_seed(0)
    return build_denoiser(TINY_DENOISER)


@pytest.fixture
def parts():
    torch.manual_seed(0)
    sketcher = Sketcher(SwinIR({"embed_dim": 8, "depths": [1], "num_heads": [1], "window_size": 4}))
    vae = build_vae(TINY_VAE)
    images = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    return sketcher.eval(), vae.eval(), images


def base_state(unet):
    """The U-Net's own weights (peft keeps them as ``...base_layer.weight``), adapters excluded."""
    return {k.replace(".base_layer", ""): v.detach().clone() for k, v in unet.state_dict().items()
            if "lora_" not in k}


def random_adapter(unet, name, seed):
    add_lora(unet, name, rank=2, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter_parameters(unet, name).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)  # B != 0: the adapter changes the output


def unet_output(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    z, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.zeros(2, 1, 8)
    with torch.no_grad():
        return unet(z, torch.tensor([10, 500]), encoder_hidden_states=ctx).sample


@pytest.mark.parametrize("train_control", [True, False])
def test_training_changes_only_adapter_and_control_weights(parts, tmp_path, train_control):
    sketcher, vae, images = parts
    unet = tiny_unet()
    before = base_state(unet)
    model = MRControlNet.from_denoiser(unet, null_text_embedding(unet))
    control_before = copy.deepcopy(model.controlnet.state_dict())
    meta = train_lora(images, CFG, tmp_path / "run", sketcher, vae, model, "lora_x", train_control,
                      seed=0, log=False)
    after = base_state(unet)
    assert set(before) == set(after)
    assert all(torch.equal(before[k], after[k]) for k in before), "a base U-Net weight changed"
    lora_b = [p for n, p in adapter_parameters(unet, "lora_x").items() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b), "the adapter did not train"
    control_same = all(torch.equal(control_before[k], v) for k, v in model.controlnet.state_dict().items())
    assert control_same != train_control
    n_lora = sum(p.numel() for p in adapter_parameters(unet, "lora_x").values())
    assert meta["adapter_parameters"] == n_lora
    assert meta["trainable_parameters"] == n_lora + (sum(
        p.numel() for p in model.controlnet.parameters()) if train_control else 0)
    assert (tmp_path / "run" / "final" / LORA_WEIGHTS_FILE).is_file()


def test_eps_loss_adapter_changes_only_adapter_weights_and_lowers_the_denoisers_loss(parts, tmp_path):
    """``lora_eps_*``: the adapter on the frozen denoiser, trained with the denoiser's own
    ε-loss on the latents of the images; no base U-Net weight and no VAE weight changes, and
    the denoiser's loss on those latents falls."""
    from ldpm.models import NullContextEps
    from ldpm.train.denoiser import denoiser_loss, encode_images

    _, vae, images = parts
    unet = tiny_unet()
    before, vae_before = base_state(unet), copy.deepcopy(vae.state_dict())
    null = null_text_embedding(unet)
    cfg = {**LORA_PRESETS["lora_eps_t1"], "rank": 2, "lora_lr": 3e-2, "batch_size": 6, "n_steps": 30,
           "flip": False, "masks": CFG["masks"]}
    from ldpm.train.vae import normalised_images

    latents = encode_images(vae, normalised_images(images, cfg, 0))

    def loss_now() -> float:
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            return float(sum(denoiser_loss(NullContextEps(unet, null), latents, base_alphas_cumprod(), g)
                             for _ in range(8)))

    start = loss_now()  # the base U-Net's
    meta = train_lora_eps(images, cfg, tmp_path / "run", vae, unet, null, "lora_eps_t1", seed=0, log=False)
    after = base_state(unet)
    assert set(before) == set(after) and all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(vae_before[k], v) for k, v in vae.state_dict().items())
    lora_b = [p for n, p in adapter_parameters(unet, "lora_eps_t1").items() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b), "the adapter did not train"
    n_lora = sum(p.numel() for p in adapter_parameters(unet, "lora_eps_t1").values())
    assert meta["trainable_parameters"] == meta["adapter_parameters"] == n_lora
    assert meta["control_parameters"] == 0
    assert (tmp_path / "run" / "final" / LORA_WEIGHTS_FILE).is_file()
    assert loss_now() < start


def test_first_step_moves_b_by_the_adapter_lr_and_the_control_branch_by_its_lr(parts, tmp_path):
    """Adam's first step is ``lr * g / (|g| + eps)``, i.e. ``lr`` times the gradient's sign
    (eps = 1e-8): after one step a LoRA ``B`` entry is 0 or moved by at most ``lora_lr`` (almost
    all by exactly that), ``A`` is still its seeded init (its gradient is 0 while ``B = 0``),
    and the moved control-branch weights moved by the control branch's ``lr``."""
    sketcher, vae, images = parts
    unet = tiny_unet()
    model = MRControlNet.from_denoiser(unet, null_text_embedding(unet))
    control_before = copy.deepcopy(model.controlnet.state_dict())
    ref = tiny_unet()
    add_lora(ref, "lora_x", rank=2, seed=0)
    a_init = {n: p.detach().clone() for n, p in adapter_parameters(ref, "lora_x").items() if "lora_A" in n}
    train_lora(images, {**CFG, "n_steps": 1}, tmp_path / "run", sketcher, vae, model, "lora_x", True,
               seed=0, log=False)
    params = adapter_parameters(unet, "lora_x")
    assert all(torch.equal(params[n], a) for n, a in a_init.items())

    def at_lr(step: torch.Tensor, lr: float, rtol: float) -> float:
        """The fraction of the moved entries that moved by ``lr`` (Adam moves none further;
        an entry whose gradient is near Adam's eps = 1e-8 moves a little less)."""
        moved = step[step > 0]
        assert moved.numel() > 100 and float(moved.max()) <= lr * (1 + rtol)
        return float(((moved - lr).abs() <= rtol * lr).float().mean())

    b = torch.cat([p.detach().flatten() for n, p in params.items() if "lora_B" in n]).abs()
    assert (b > 0).float().mean() > 0.25
    assert at_lr(b, CFG["lora_lr"], 1e-3) > 0.95
    delta = torch.cat([(v - control_before[k]).abs().flatten()
                       for k, v in model.controlnet.state_dict().items()])
    assert at_lr(delta, CFG["lr"], 1e-2) > 0.95


def test_save_load_round_trips_exactly(tmp_path):
    unet = tiny_unet()
    random_adapter(unet, "a", seed=3)
    save_lora(unet, "a", tmp_path)
    fresh = tiny_unet()
    load_lora(fresh, tmp_path, "a")
    combine_adapters(fresh, ["a"])
    saved, loaded = adapter_parameters(unet, "a"), adapter_parameters(fresh, "a")
    assert set(saved) == set(loaded)
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert fresh.peft_config["a"].r == 2
    assert torch.equal(unet_output(unet), unet_output(fresh))
    effect = (unet_output(fresh) - unet_output(tiny_unet())).abs().max()
    assert effect > 0.1, f"the adapter had (almost) no effect: {effect}"


@pytest.mark.parametrize("damage", [b"\x00garbage{{{", None])
def test_unreadable_adapter_is_one_error_naming_it(damage, tmp_path):
    from ldpm.errors import LdpmInputError

    unet = tiny_unet()
    random_adapter(unet, "a", seed=3)
    save_lora(unet, "a", tmp_path)
    weights = tmp_path / LORA_WEIGHTS_FILE
    weights.write_bytes(damage if damage is not None else weights.read_bytes()[:100])
    with pytest.raises(LdpmInputError, match=LORA_WEIGHTS_FILE) as err:
        load_lora(tiny_unet(), tmp_path, "a")
    assert "Fix:" in str(err.value) and "\n" not in str(err.value)


def test_combining_two_adapters_with_weights_1_0_equals_the_first_alone():
    unet = tiny_unet()
    random_adapter(unet, "a", seed=1)
    random_adapter(unet, "b", seed=2)
    combine_adapters(unet, ["a"])
    a_alone = unet_output(unet)
    combine_adapters(unet, ["b"])
    b_alone = unet_output(unet)
    combine_adapters(unet, ["a", "b"], [1.0, 0.0])
    assert torch.equal(unet_output(unet), a_alone)
    combine_adapters(unet, ["a", "b"], [0.0, 1.0])
    assert torch.equal(unet_output(unet), b_alone)
    combine_adapters(unet, ["a", "b"], [0.5, 0.5])
    mixed = unet_output(unet)
    gap = min((mixed - a_alone).abs().max(), (mixed - b_alone).abs().max())
    assert gap > 0.1 * (a_alone - b_alone).abs().max(), gap


def test_adapted_layer_is_base_plus_weighted_scaled_low_rank_updates():
    """One adapted attention projection by hand: ``W x (+ b) + sum_i s_i (alpha_i / r_i) B_i A_i x``
    with adapter a (rank 2, alpha = rank: scale 1) and b (rank 2, alpha 6: scale 3), for the
    combination weights (0.7, -0.4), b alone, and a alone."""
    unet = tiny_unet()
    add_lora(unet, "a", rank=2, seed=1)
    add_lora(unet, "b", rank=2, alpha=6.0, seed=2)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name in ("a", "b"):
            for p in adapter_parameters(unet, name).values():
                p.copy_(torch.randn(p.shape, generator=g))
    name, layer = next((n, m) for n, m in unet.named_modules() if n.endswith("attn1.to_q"))
    W = layer.base_layer.weight.detach()
    bias = layer.base_layer.bias.detach() if layer.base_layer.bias is not None else 0.0
    A = {k: layer.lora_A[k].weight.detach() for k in ("a", "b")}
    B = {k: layer.lora_B[k].weight.detach() for k in ("a", "b")}
    assert A["a"].shape == (2, W.shape[1]) and B["b"].shape == (W.shape[0], 2), name
    x = torch.randn(5, W.shape[1], generator=g)
    low = {k: x @ A[k].T @ B[k].T for k in ("a", "b")}
    base = x @ W.T + bias
    cases = ((["a", "b"], [0.7, -0.4], base + 0.7 * low["a"] - 0.4 * 3.0 * low["b"]),
             (["b"], None, base + 3.0 * low["b"]),
             (["a"], [2.0], base + 2.0 * low["a"]))
    for adapters, weights, expected in cases:
        combine_adapters(unet, adapters, weights)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lora_lr", [3e-2, 0.0])
def test_a_few_adapter_steps_lower_the_loss(parts, tmp_path, lora_lr):
    """15 adapter-only steps lower the held-out eq. 7 loss by more than 2 % (about 4 % here);
    the same run at ``lora_lr = 0`` leaves it where it was (the control of that drop)."""
    sketcher, vae, images = parts
    unet = tiny_unet()
    torch.manual_seed(0)
    model = MRControlNet.from_denoiser(unet, null_text_embedding(unet))
    abar = base_alphas_cumprod()

    def held_out_loss():  # the same images, masks, t and noise before and after training
        with torch.no_grad():
            return float(np.mean([controlnet_loss(model, sketcher, vae, images, abar,
                                                  torch.Generator().manual_seed(100 + i), (4, 0.08), 7, i)
                                  for i in range(4)]))

    before = held_out_loss()
    train_lora(images, {**CFG, "n_steps": 15, "batch_size": 6, "lora_lr": lora_lr}, tmp_path / "run",
               sketcher, vae, model, "lora_x", train_control=False, seed=0, log=False)
    model.eval()
    after = held_out_loss()
    if lora_lr > 0:
        assert after < 0.98 * before, (before, after)
    else:
        assert after == pytest.approx(before, rel=1e-6), (before, after)


def test_interrupted_and_resumed_equals_uninterrupted(parts, tmp_path):
    sketcher, vae, images = parts
    results = []
    for name, stop in (("straight", None), ("resumed", 2)):
        unet = tiny_unet()
        model = MRControlNet.from_denoiser(unet, null_text_embedding(unet))
        ckpt = tmp_path / name
        if stop:
            train_lora(images, CFG, ckpt, sketcher, vae, model, "lora_x", True, seed=0, log=False,
                       stop_after=stop)
            unet = tiny_unet()  # a new process: fresh networks, state from last.pt
            model = MRControlNet.from_denoiser(unet, null_text_embedding(unet))
        train_lora(images, CFG, ckpt, sketcher, vae, model, "lora_x", True, seed=0, log=False)
        results.append((adapter_parameters(unet, "lora_x"), model.controlnet.state_dict()))
    (lora_a, cn_a), (lora_b, cn_b) = results
    assert all(torch.equal(lora_a[k], lora_b[k]) for k in lora_a)
    assert all(torch.equal(cn_a[k], cn_b[k]) for k in cn_a)


def test_stage_and_method_graph():
    assert step_variant("ldpm_lora_r4_s10") == ("ldpm_lora_r4", 10)
    assert step_variant("ldpm_s50") == ("ldpm", 50)
    assert step_variant("unet_s10") == ("unet_s10", None)  # only sampling methods take a step count
    assert stage_dependencies("lora_r4", False) == ["sketcher", "vae", "denoiser"]
    assert stage_dependencies("lora_t2", True) == ["sketcher", "vae", "controlnet"]
    assert stage_dependencies("lora_eps_t1", False) == ["vae", "denoiser"]
    assert stage_dependencies("lora_eps_t2", True) == ["vae"]
    assert method_stages("ldpm_lora_eps_mix", False) == ["sketcher", "vae", "denoiser", "controlnet",
                                                          "lora_eps_t1", "lora_eps_t2"]
    assert method_stages("ldpm_lora_mix", False) == ["sketcher", "vae", "denoiser", "controlnet",
                                                      "lora_t1", "lora_t2"]
    assert method_stages("ldpm_s10", False) == method_stages("ldpm", False)
    assert own_stages("ldpm_lora_r16_s10") == ["lora_r16"] and own_stages("ldpm") == ["controlnet"]
    inference = {"seed": 0, "ldpm": {"n_steps": 25, "p": 200}, "lora": {"mix_weights": [0.7, 0.3]}}
    assert method_options("ldpm_lora_mix", inference)["adapter_weights"] == [0.7, 0.3]
    assert method_options("ldpm_lora_t1", inference)["adapter_weights"] == [1.0]
    assert method_options("ldpm_lora_r4_s10", inference)["n_steps"] == 10
    cfg = {"inference": inference, "lora": {"enabled": True, "methods": ["ldpm_lora_r4"],
                                            "step_methods": ["ldpm"], "step_counts": [50, 25, 10]}}
    assert study_methods(cfg) == ["ldpm", "ldpm_lora_r4", "ldpm_s50", "ldpm_s10"]
    assert study_methods({**cfg, "lora": {**cfg["lora"], "enabled": False}}) == []


def test_sampling_time_goes_beside_the_recon_file_which_stays_reproducible(tmp_path, monkeypatch):
    import ldpm.methods as lm

    def timed_method(k_u, mask, checkpoints, options):
        return lm.Reconstruction(np.abs(k_u).astype(np.float32), {"sampling_seconds": 0.5})

    monkeypatch.setitem(lm.METHODS, "timed", timed_method)
    shard = tmp_path / "shard0.h5"
    with h5py.File(shard, "w") as f:
        f.create_dataset("target", data=np.ones((2, 8, 8), np.float32))
        f.create_dataset("mask", data=np.ones((2, 8), np.float32))
        f.create_dataset("volume", data=np.array([b"v", b"v"]))
        f.create_dataset("slice", data=np.array([0, 1]))
    for run in ("a", "b"):
        reconstruct_shard("timed", shard, tmp_path / run / "shard0.h5")
    assert (tmp_path / "a" / "shard0.h5").read_bytes() == (tmp_path / "b" / "shard0.h5").read_bytes()
    record = json.loads(timing_path(tmp_path / "a" / "shard0.h5").read_text())
    assert record["sampling_seconds"] == 0.5 and record["n_slices"] == 2 and record["seconds"] >= 0


def _write_results(root, with_times=True):
    """A results/ folder as the pipeline leaves it, for two rows (LDPM, LDPM + LoRA r=4)."""
    (root / "data" / "test").mkdir(parents=True)
    (root / "data" / "test" / "shard0.h5").touch()
    for stage, meta in {"controlnet": {"seconds": 30.0, "steps_done": 100},
                        "lora_r4": {"seconds": 40.0, "steps_done": 100, "rank": 4,
                                    "trainable_parameters": 1234, "adapter_parameters": 34}}.items():
        (root / "models" / stage / "final").mkdir(parents=True)
        (root / "models" / stage / "meta.json").write_text(json.dumps(meta))
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(10, 10), "b": torch.zeros(7)},
              root / "models" / "controlnet" / "final" / "diffusion_pytorch_model.safetensors")
    for i, method in enumerate(["ldpm", "ldpm_lora_r4"]):
        (root / "metrics" / method).mkdir(parents=True)
        summary = {"method": method, "metrics": {
            "psnr": {"value": 20.0 + i, "std": 1.0, "reason": None},
            "ssim": {"value": 0.5, "std": 0.1, "reason": None},
            "lpips": {"value": None, "std": None, "reason": "AlexNet weights not available offline"}}}
        (root / "metrics" / method / "summary.json").write_text(json.dumps(summary))
        pd.DataFrame({"method": method, "volume": ["v1", "v2", "v3"], "contrast": ["T1", "T1POST", "FLAIR"],
                      "psnr": [19.0 + i, 21.0 + i, 30.0]}).to_csv(root / "metrics" / method / "per_volume.csv")
        (root / "recon" / method).mkdir(parents=True)
        with h5py.File(root / "recon" / method / "shard0.h5", "w") as f:
            f.create_dataset("recon", data=np.zeros((4, 8, 8), np.float32))
        if with_times or method != "ldpm":
            timing_path(root / "recon" / method / "shard0.h5").write_text(json.dumps(
                {"method": method, "n_slices": 4, "seconds": 9.0 * (i + 1), "sampling_seconds": 8.0 * (i + 1)}))


def test_table_renders_numbers_from_files_and_na_with_reasons(tmp_path):
    from ldpm.studies.lora.report import make_lora_table

    _write_results(tmp_path, with_times=False)
    csv, md, tex = make_lora_table(tmp_path, ["ldpm", "ldpm_lora_r4"], 25, [0.5, 0.5])
    table = pd.read_csv(csv).set_index("method")
    assert table.loc["ldpm_lora_r4", "psnr"] == 21.0
    assert table.loc["ldpm_lora_r4", "psnr_t1"] == pytest.approx(21.0)  # mean of T1 and T1POST volumes
    assert table.loc["ldpm", "trainable"] == 107  # the controlnet stage's saved weights
    assert table.loc["ldpm_lora_r4", "trainable"] == 1234
    assert table.loc["ldpm_lora_r4", "train_s_step"] == pytest.approx(0.4)
    assert table.loc["ldpm_lora_r4", "sample_s_slice"] == pytest.approx(4.0)
    assert pd.isna(table.loc["ldpm", "sample_s_slice"])
    text = md.read_text()
    assert "LDPM + LoRA r=4 (joint: adapter + control branch, control loss)" in text
    assert "LDPM (frozen denoiser), 25 steps" in text
    assert "n/a" in text and "AlexNet weights not available offline" in text
    assert "no sampling time for recon/ldpm/shard0.h5" in text
    assert "no T2/FLAIR" not in text and "30.00" in text  # the FLAIR volume is the T2/FLAIR group
    assert tex.read_text().count("n/a") >= 3


def test_curves_show_each_rows_own_stage_once(tmp_path):
    from ldpm.studies.lora.report import curve_stages, make_lora_curves

    methods = ["ldpm", "ldpm_lora_r4", "ldpm_lora_mix", "ldpm_lora_t1", "ldpm_s10"]
    assert curve_stages(methods) == ["controlnet", "lora_r4", "lora_t1", "lora_t2"]
    (tmp_path / "models" / "lora_r4" / "final").mkdir(parents=True)
    loss = np.linspace(2.0, 1.0, 20)
    log = tmp_path / "models" / "lora_r4" / "log.csv"
    pd.DataFrame({"step": range(20), "loss": loss}).to_csv(log, index=False)
    png, losses = make_lora_curves(tmp_path, ["ldpm", "ldpm_lora_r4"])
    assert png == tmp_path / "figures" / "lora_curves.png" and png.is_file()
    assert png.with_suffix(".pdf").is_file()
    losses = losses.set_index("stage")
    assert losses.loc["lora_r4", "first_10pct"] == pytest.approx(loss[:2].mean())
    assert "stage not trained" in losses.loc["controlnet", "missing"]
