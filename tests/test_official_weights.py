"""fastMRI's published multicoil U-Net and E2E-VarNet weights (``unet_official`` and
``varnet_official``; the paper used both).

Our models must load fastMRI's state dicts and compute what fastMRI's own code computes
(checked against the ``fastmri`` package, installed with ``--no-deps`` by ``make install`` for
these tests); the methods must run them on the raw multicoil k-space of each test slice, with
the stored mask, and crop like the targets.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ldpm.config import load_config
from ldpm.data import build_manifest, preprocess_volume, read_shard, write_test_shard
from ldpm.errors import LdpmInputError
from ldpm.methods import as_magnitude, reconstruct_shard
from ldpm.models.unet import UnetRecon, load_official_unet
from ldpm.models.varnet import MulticoilVarNet, load_official_varnet, low_frequency_band
from ldpm.mri import center_crop

TINY_ARCH = {"num_cascades": 2, "chans": 4, "pools": 2, "sens_chans": 4, "sens_pools": 2}
TINY_UNET = {"chans": 4, "num_pool_layers": 2}
REPO = Path(__file__).resolve().parents[1]


def fastmri_reference(seed: int = 0):
    """fastMRI's own VarNet of the tiny architecture (the oracle), seeded."""
    fm_varnet = pytest.importorskip("fastmri.models.varnet", reason="make install adds fastmri")
    torch.manual_seed(seed)
    return fm_varnet.VarNet(num_cascades=2, sens_chans=4, sens_pools=2, chans=4, pools=2).eval()


def multicoil_measurement(coils=4, h=40, w=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.complex(torch.randn(1, coils, h, w, generator=g), torch.randn(1, coils, h, w, generator=g))
    mask = torch.zeros(1, w)
    mask[0, w // 2 - 3:w // 2 + 3] = 1  # 6 centre lines
    mask[0, [1, 5, 17, 21]] = 1
    return k * mask[:, None, None, :], mask


def test_low_frequency_band_is_the_centre_run():
    mask = torch.zeros(2, 24)
    mask[0, 9:15] = 1       # symmetric 6 lines around 12
    mask[1, 10:16] = 1      # 2 left of 12, 4 right: symmetric band of 4
    start, stop = low_frequency_band(mask)
    assert start.tolist() == [9, 10] and stop.tolist() == [15, 14]


def test_matches_fastmri_varnet_and_loads_its_checkpoints(tmp_path):
    ref = fastmri_reference()
    plain = tmp_path / "brain_leaderboard_state_dict.pt"
    torch.save(ref.state_dict(), plain)
    lightning = tmp_path / "varnet.ckpt"  # fastMRI's Lightning module stores "varnet." keys
    torch.save({"state_dict": {f"varnet.{k}": v for k, v in ref.state_dict().items()}}, lightning)
    k_u, mask = multicoil_measurement()
    with torch.no_grad():
        expected = ref(torch.view_as_real(k_u), mask.bool()[:, None, None, :, None])
        for path in (plain, lightning):
            ours = load_official_varnet(path, TINY_ARCH)
            assert not ours.training
            torch.testing.assert_close(ours(k_u, mask), expected, rtol=1e-4, atol=1e-5)
            # and the sensitivity maps are normalised over coils
            sens = ours.sens_net(k_u, mask)
            torch.testing.assert_close(sens.abs().pow(2).sum(1), torch.ones(1, 40, 24))


def test_bad_checkpoints_are_refused_naming_the_file(tmp_path):
    with pytest.raises(LdpmInputError, match="not found"):
        load_official_varnet(tmp_path / "missing.pt", TINY_ARCH)
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(LdpmInputError, match="not a readable torch checkpoint"):
        load_official_varnet(junk, TINY_ARCH)
    small = tmp_path / "small.pt"
    torch.save(MulticoilVarNet(TINY_ARCH).state_dict(), small)
    with pytest.raises(LdpmInputError, match="do not fit an E2E-VarNet with .*missing: ") as err:
        load_official_varnet(small)  # the official architecture has 12 cascades
    assert "inference.varnet_official.model" in str(err.value)


@pytest.fixture(scope="module")
def multicoil_data(tmp_path_factory):
    """Tiny fastMRI-format files -> stores -> manifest -> one test shard; and a checkpoint."""
    from conftest import write_fastmri_file

    root = tmp_path_factory.mktemp("mc")
    rng = np.random.default_rng(0)
    stores = []
    for i in range(4):
        # smooth objects seen by 3 coils, so that k-space has a centre like a real scan
        yy, xx = np.mgrid[-1:1:32j, -1:1:16j]
        obj = np.exp(-((yy / 0.6) ** 2 + (xx / 0.5) ** 2)) * (1 + 0.2 * rng.random((32, 16)))
        sens = np.stack([np.exp(1j * c + (xx - c / 2) ** 2) for c in range(3)])
        img = (obj * sens)[None].repeat(5, 0).astype(np.complex64)
        kspace = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(img, axes=(-2, -1)), norm="ortho"),
                                 axes=(-2, -1)).astype(np.complex64)
        src = write_fastmri_file(root / f"file_brain_AXT2_{i:03d}.h5", kspace=kspace,
                                 patient_id=f"s{i}")
        stores.append(preprocess_volume(src, root / f"store{i}.h5", crop_size=16,
                                        drop_last_slices=3))
    manifest = root / "manifest.csv"
    build_manifest(stores, manifest, {"train": 0.5, "val": 0.0, "test": 0.5}, seed=0)
    shard = write_test_shard(manifest, 0, 1, root / "shard0.h5", acceleration=4,
                             center_fraction=0.25, mask_seed=1)
    ckpt, unet_ckpt = root / "weights.pt", root / "unet_weights.pt"
    torch.manual_seed(1)
    torch.save(MulticoilVarNet(TINY_ARCH).state_dict(), ckpt)
    torch.save(UnetRecon(TINY_UNET).unet.state_dict(), unet_ckpt)
    return {"root": root, "manifest": manifest, "shard": shard, "ckpt": ckpt,
            "unet_ckpt": unet_ckpt}


def test_method_reconstructs_the_raw_multicoil_slices_with_the_stored_masks(multicoil_data):
    d = multicoil_data
    out = d["root"] / "recon.h5"
    options = {"checkpoint": str(d["ckpt"]), "model": TINY_ARCH, "manifest": str(d["manifest"]),
               "device": "cpu"}
    reconstruct_shard("varnet_official", d["shard"], out, options=options)
    shard, recon = read_shard(d["shard"]), read_shard(out)
    assert recon["recon"].shape == shard["target"].shape and len(shard["target"]) == 4
    assert recon["volume"] == shard["volume"]
    # the same computation by hand: raw k-space of the slice, its stored mask, crop
    import h5py

    model = load_official_varnet(d["ckpt"], TINY_ARCH)
    for i, (volume, s) in enumerate(zip(shard["volume"], shard["slice"])):
        with h5py.File(d["root"] / f"{volume}.h5") as f:
            k = torch.from_numpy(f["kspace"][s])[None]
        m = torch.from_numpy(shard["mask"][i])[None]
        assert 0 < m.mean() < 1
        with torch.no_grad():
            image = model(k * m[:, None, None, :], m)[0].numpy()
        np.testing.assert_allclose(recon["recon"][i], center_crop(image, (16, 16)), rtol=1e-5,
                                   atol=1e-6)


def test_unet_official_is_fastmris_unet_on_the_rss_of_the_zero_filled_coils(multicoil_data):
    """Against fastMRI's own UnetDataTransform('multicoil') + Unet on the same masked k-space."""
    fm_unet = pytest.importorskip("fastmri.models.unet", reason="make install adds fastmri")
    transforms = pytest.importorskip("fastmri.data.transforms")
    d = multicoil_data
    torch.manual_seed(2)
    ref = fm_unet.Unet(1, 1, chans=4, num_pool_layers=2).eval()
    weights = d["root"] / "fastmri_unet.pt"
    torch.save(ref.state_dict(), weights)
    out = d["root"] / "recon_unet.h5"
    reconstruct_shard("unet_official", d["shard"], out, options={
        "checkpoint": str(weights), "model": TINY_UNET, "manifest": str(d["manifest"]),
        "device": "cpu"})
    shard, recon = read_shard(d["shard"]), read_shard(out)
    import h5py

    for i, (volume, s) in enumerate(zip(shard["volume"], shard["slice"])):
        with h5py.File(d["root"] / f"{volume}.h5") as f:
            masked = f["kspace"][s] * shard["mask"][i][None, None, :]
        sample = transforms.UnetDataTransform("multicoil")(masked, None, np.zeros((16, 16)), {},
                                                          volume, s)
        with torch.no_grad():
            expected = ref(sample.image[None, None])[0, 0] * sample.std + sample.mean
        # written as a magnitude image: fastMRI's output with its negative values set to 0
        np.testing.assert_allclose(recon["recon"][i], as_magnitude(expected.numpy()), rtol=1e-4,
                                   atol=1e-6)
    # and a file of another architecture is refused, naming the key to set
    with pytest.raises(LdpmInputError, match="inference.unet_official.model"):
        load_official_unet(weights)  # fastMRI's released U-Nets have 256 channels


def test_method_refuses_masks_narrower_than_the_raw_kspace(multicoil_data, tmp_path):
    from conftest import write_fastmri_file

    stores = [preprocess_volume(write_fastmri_file(tmp_path / f"file_brain_AXT2_90{i}.h5",
                                                   shape=(32, 16), patient_id=f"w{i}"),
                                tmp_path / f"store{i}.h5", crop_size=12, drop_last_slices=3)
              for i in range(2)]
    manifest = tmp_path / "manifest.csv"
    build_manifest(stores, manifest, {"train": 0.5, "val": 0.0, "test": 0.5}, seed=0)
    shard = write_test_shard(manifest, 0, 1, tmp_path / "shard.h5", 4, 0.25, 1)
    options = {"checkpoint": str(multicoil_data["ckpt"]), "model": TINY_ARCH,
               "manifest": str(manifest), "device": "cpu"}
    with pytest.raises(LdpmInputError, match="16 lines wide but the stored masks are 12"):
        reconstruct_shard("varnet_official", shard, tmp_path / "r.h5", options=options)


@pytest.mark.parametrize("method", ["unet_official", "varnet_official"])
def test_config_requires_the_weights_when_the_method_is_listed(method):
    with pytest.raises(LdpmInputError, match=f"inference.{method}.checkpoint"):
        load_config(overrides={"methods": ["zero_filled", method]})
    cfg = load_config(overrides={"methods": ["zero_filled", method],
                                 "inference": {method: {"checkpoint": "w.pt"}}})
    assert cfg["inference"][method]["checkpoint"] == "w.pt"


def test_dag_reconstructs_with_the_weights_and_trains_nothing_for_it(tmp_path):
    """Dry run: the methods' jobs read the manifest and the weights; no training job."""
    from conftest import SNAKEMAKE as snakemake
    weights = tmp_path / "brain_leaderboard_state_dict.pt"
    weights.write_bytes(b"")
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({
        "methods": ["zero_filled", "unet_official", "varnet_official"],
        "inference": {"unet_official": {"checkpoint": str(weights)},
                      "varnet_official": {"checkpoint": str(weights)}},
        "diffcode": {"enabled": False}, "lora": {"enabled": False}}))
    cmd = [snakemake, "all", "-n", "--quiet", "rules", "--directory", str(tmp_path / "w"),
           "--snakefile", str(REPO / "Snakefile"),
           "--configfile", str(REPO / "config" / "config.yaml"), str(extra)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    from conftest import job_stats
    stats = out.stdout + out.stderr
    counts = job_stats(stats)
    n_shards = load_config()["inference"]["n_shards"]
    assert "train" not in counts and counts["reconstruct"] == 3 * n_shards, stats
    weights.unlink()  # the weights are an input of its jobs
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert out.returncode != 0 and "MissingInputException" in out.stdout + out.stderr
