"""``ldpm predict``: a user's own fastMRI-format files -> fastMRI's submission layout."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import yaml
from conftest import reference_rss, write_fastmri_file

from ldpm.cli import main
from ldpm.config import deep_merge, load_config
from ldpm.mri import mask_for_slice

CROP = 32


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "run.yaml"
    raw = yaml.safe_load(open(load_config.__defaults__[0]))
    path.write_text(yaml.safe_dump(deep_merge(raw, {"data": {"crop_size": CROP}})))
    return path


@pytest.fixture(scope="module")
def trained_unet(tmp_path_factory, config_file):
    import torch

    from ldpm.train.baselines import train_baseline

    models = tmp_path_factory.mktemp("models")
    images = torch.rand(4, 1, CROP, CROP, generator=torch.Generator().manual_seed(0))
    train_baseline("unet", images, {"n_steps": 2, "batch_size": 2, "crop": None,
                                    "masks": {"acceleration": 8, "center_fraction": 0.04}},
                   models / "unet", log=False)
    return models


def _rss(path):
    with h5py.File(path) as f:
        return reference_rss(f["kspace"][()], CROP)


def _zero_filled(x, mask):
    k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    k = k * mask[:, None, :]
    return np.abs(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"),
                                  axes=(-2, -1)))


def _predict(*args):
    return main(["predict", *map(str, args), "--device", "cpu"])


def test_zero_filled_of_a_folder_is_the_seeded_measurement_in_submission_layout(tmp_path, config_file):
    scans = tmp_path / "scans"
    scans.mkdir()
    a = write_fastmri_file(scans / "a.h5", shape=(48, 40), n_slices=3, seed=1)
    b = write_fastmri_file(scans / "b.h5", shape=(40, 40), n_slices=2, seed=2)
    out = tmp_path / "out"
    assert _predict("--method", "zero_filled", "--input", scans, "--output-dir", out,
                    "--config", config_file, "--acceleration", 4, "--mask-seed", 7) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.h5", "b.h5"]
    for src in (a, b):
        x = _rss(src)
        mask = np.stack([mask_for_slice(src.stem, s, CROP, 4, 0.04, base_seed=7) for s in range(len(x))])
        with h5py.File(out / src.name) as f:
            rec = f["reconstruction"][()]
            assert f.attrs["mask"] == "seeded" and f.attrs["acceleration"] == 4
        assert rec.dtype == np.float32 and rec.shape == (len(x), CROP, CROP)
        np.testing.assert_allclose(rec, _zero_filled(x, mask), rtol=1e-4, atol=1e-5 * x.max())


def test_a_file_with_its_own_mask_is_measured_with_it(tmp_path, config_file):
    src = write_fastmri_file(tmp_path / "own.h5", shape=(CROP, CROP), n_slices=2, seed=3)
    own = np.zeros(CROP, np.float32)
    own[::3] = 1
    with h5py.File(src, "a") as f:
        f["mask"] = own
    out = tmp_path / "out"
    assert _predict("--method", "zero_filled", "--input", src, "--output-dir", out,
                    "--config", config_file) == 0
    with h5py.File(out / "own.h5") as f:
        assert f.attrs["mask"] == "file"
        np.testing.assert_allclose(f["reconstruction"][()], _zero_filled(_rss(src), np.stack([own] * 2)),
                                   rtol=1e-4, atol=1e-6)


def test_a_trained_method_from_a_models_folder_is_deterministic(tmp_path, config_file, trained_unet):
    src = write_fastmri_file(tmp_path / "s.h5", shape=(40, 36), n_slices=2, seed=4)
    outs = []
    for run in ("1", "2"):
        assert _predict("--method", "unet", "--input", src, "--output-dir", tmp_path / run,
                        "--models", trained_unet, "--config", config_file) == 0
        with h5py.File(tmp_path / run / "s.h5") as f:
            outs.append(f["reconstruction"][()])
    assert outs[0].shape == (2, CROP, CROP) and np.isfinite(outs[0]).all()
    np.testing.assert_array_equal(*outs)
    zf = tmp_path / "zf"
    assert _predict("--method", "zero_filled", "--input", src, "--output-dir", zf,
                    "--config", config_file) == 0
    with h5py.File(zf / "s.h5") as f:
        assert np.abs(f["reconstruction"][()] - outs[0]).max() > 1e-4


@pytest.mark.parametrize("case", ["no_models", "missing_stage", "empty_folder", "mask_width",
                                  "not_hdf5"])
def test_bad_input_is_one_error_line_and_writes_nothing(case, tmp_path, capsys, config_file,
                                                        trained_unet):
    src = write_fastmri_file(tmp_path / "s.h5", shape=(CROP, CROP), n_slices=2)
    args = ["--method", "unet", "--input", src, "--models", trained_unet]
    named = str(src)
    if case == "no_models":
        args, named = ["--method", "unet", "--input", src], "--models"
    elif case == "missing_stage":
        args = ["--method", "varnet", "--input", src, "--models", trained_unet]
        named = str(trained_unet / "varnet")
    elif case == "empty_folder":
        (tmp_path / "empty").mkdir()
        args, named = ["--method", "zero_filled", "--input", tmp_path / "empty"], str(tmp_path / "empty")
    elif case == "mask_width":
        with h5py.File(src, "a") as f:
            f["mask"] = np.ones(CROP + 4, np.float32)
    else:
        src.write_bytes(b"not an HDF5 file")
        args = ["--method", "zero_filled", "--input", src]
    out = tmp_path / "out"
    assert _predict(*args, "--output-dir", out, "--config", config_file) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and err[0].startswith("ldpm predict: error: ") and named in err[0], err
    assert not out.exists() or not any(out.iterdir())
