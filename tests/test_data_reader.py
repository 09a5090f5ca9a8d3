"""fastMRI multicoil reader: targets as fastMRI builds them, metadata, and every bad input."""

from pathlib import Path

import h5py
import numpy as np
import pytest

from ldpm.data import list_volumes, preprocess_volume, read_volume
from ldpm.errors import LdpmInputError
from ldpm.mri import center_crop, ifft2c, rss


def test_targets_are_fastmri_rss(make_fastmri_file):
    path = make_fastmri_file(with_rss=True)
    vol = read_volume(path, crop_size=16, drop_last_slices=3)
    with h5py.File(path) as f:
        kspace, recon = f["kspace"][()], f["reconstruction_rss"][()]
    assert vol.targets.dtype == np.float32 and vol.targets.shape == (2, 16, 16)
    np.testing.assert_array_equal(vol.slice_index, [0, 1])
    expected = np.stack([center_crop(rss(ifft2c(k), coil_axis=0), (16, 16)) for k in kspace[:2]])
    np.testing.assert_allclose(vol.targets, expected, rtol=1e-6)
    np.testing.assert_allclose(vol.targets, recon[:2], rtol=1e-5)


@pytest.mark.parametrize("drop", [0, 1, 3, 4])
def test_drops_last_slices(make_fastmri_file, drop):
    vol = read_volume(make_fastmri_file(with_rss=True), crop_size=16, drop_last_slices=drop)
    assert len(vol.targets) == 5 - drop
    np.testing.assert_array_equal(vol.slice_index, np.arange(5 - drop))


@pytest.mark.parametrize("name, acquisition, tesla, anatomy, contrast, field", [
    ("file_brain_AXFLAIR_200_6002441.h5", "AXFLAIR", 1.494, "brain", "FLAIR", 1.5),
    ("file_brain_AXT1_202_2020098.h5", "AXT1", 2.89362, "brain", "T1", 3.0),
    ("file_brain_AXT1PRE_203_6000620.h5", "AXT1PRE", 1.5, "brain", "T1PRE", 1.5),
    ("file_brain_AXT1POST_207_2070135.h5", "AXT1POST", 3.0, "brain", "T1POST", 3.0),
    ("file_brain_AXT2_200_2000019.h5", "AXT2", 2.1, "brain", "T2", 1.5),
    ("file1000002.h5", "CORPD_FBK", 2.89362, "knee", "PD", 3.0),
    ("file1000005.h5", "CORPDFS_FBK", 1.494, "knee", "PDFS", 1.5),
    ("file_brain_AXT1_201_6002686.h5", None, 3.0, "brain", "T1", 3.0),  # from the name
])
def test_metadata(make_fastmri_file, name, acquisition, tesla, anatomy, contrast, field):
    path = make_fastmri_file(name, acquisition=acquisition, field_strength=tesla)
    meta = read_volume(path, crop_size=16).meta
    assert (meta["anatomy"], meta["contrast"], meta["field_strength"]) == (anatomy, contrast,
                                                                            field)
    assert meta["volume"] == Path(name).stem and meta["source_file"] == str(path)
    assert meta["subject"] == "p001" and meta["acquisition"] == acquisition


def test_subject_defaults_to_stem(make_fastmri_file):
    path = make_fastmri_file("file_brain_AXT2_1.h5", patient_id=None)
    assert read_volume(path, crop_size=16).meta["subject"] == "file_brain_AXT2_1"


def _truncated(make, tmp_path):
    path = make("file_brain_AXT2_trunc.h5", n_slices=6, shape=(64, 32))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


def _text_file(make, tmp_path):
    path = tmp_path / "file_brain_AXT2_txt.h5"
    path.write_text("not an HDF5 file")
    return path


def _with_nan(value):
    def build(make, tmp_path):
        k = (np.ones((5, 2, 32, 16)) + 0j).astype(np.complex64)
        k[1, 0, 3, 3] = value
        return make("file_brain_AXT2_bad.h5", kspace=k)
    return build


def _raw_h5(name, **datasets):
    def build(make, tmp_path):
        path = tmp_path / name
        with h5py.File(path, "w") as f:
            for key, value in datasets.items():
                f.create_dataset(key, data=value)
        return path
    return build


BAD_INPUTS = {
    "missing": (lambda make, tmp: tmp / "file_brain_AXT2_gone.h5", "not found"),
    "not_hdf5": (_text_file, "not a readable HDF5"),
    "truncated": (_truncated, "not a readable HDF5"),
    "no_kspace": (_raw_h5("file_brain_AXT2_nok.h5", image=np.zeros((5, 32, 16))), "no 'kspace'"),
    "singlecoil": (lambda make, tmp: make("file_brain_AXT2_sc.h5", kspace=np.zeros(
        (5, 32, 16), np.complex64)), "singlecoil files are not supported"),
    "rank5": (lambda make, tmp: make("file_brain_AXT2_r5.h5", kspace=np.zeros(
        (5, 2, 1, 32, 16), np.complex64)), "expected 4-D"),
    "real_dtype": (lambda make, tmp: make("file_brain_AXT2_real.h5", kspace=np.zeros(
        (5, 2, 32, 16), np.float32)), "expected complex"),
    "nan": (_with_nan(np.nan), "NaN or inf"),
    "inf": (_with_nan(np.inf), "NaN or inf"),
    "too_few_slices": (lambda make, tmp: make("file_brain_AXT2_few.h5", n_slices=3),
                       "at least 4 are needed"),
    "far_smaller_than_crop": (lambda make, tmp: make("file_brain_AXT2_small.h5", shape=(32, 3)),
                              "less than a quarter of the 16x16 crop"),
    "no_header": (lambda make, tmp: make("file_brain_AXT2_nohdr.h5", header=""),
                  "no 'ismrmrd_header'"),
    "bad_header": (lambda make, tmp: make("file_brain_AXT2_badhdr.h5", header="<ismrmrd"),
                   "not valid XML"),
    "no_field_strength": (lambda make, tmp: make("file_brain_AXT2_nofs.h5", field_strength=None),
                          "no systemFieldStrength_T"),
    "bad_field_strength": (lambda make, tmp: make("file_brain_AXT2_fs.h5", field_strength="3T"),
                           "is not a number"),
    "unknown_anatomy": (lambda make, tmp: make("scan_0001.h5", acquisition=None),
                        "cannot tell brain from knee"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_and_writes_nothing(make_fastmri_file, tmp_path, case):
    build, problem = BAD_INPUTS[case]
    path = build(make_fastmri_file, tmp_path)
    out_dir = tmp_path / "stores"
    with pytest.raises(LdpmInputError) as err:
        preprocess_volume(path, out_dir / "vol.h5", crop_size=16, drop_last_slices=3)
    message = str(err.value)
    assert path.name in message and problem in message and "Fix:" in message
    assert not out_dir.exists() or not any(out_dir.iterdir())  # no output, no temp file


def test_list_volumes(tmp_path, make_fastmri_file):
    (tmp_path / "sub").mkdir()
    b = make_fastmri_file("b.h5")
    a = make_fastmri_file("sub/a.h5")
    (tmp_path / "notes.txt").write_text("x")
    assert list_volumes(tmp_path) == sorted([a, b])


def test_list_volumes_errors(tmp_path, make_fastmri_file):
    empty = tmp_path / "empty_release"
    empty.mkdir()
    with pytest.raises(LdpmInputError, match="empty_release.*no \\*.h5"):
        list_volumes(empty)
    with pytest.raises(LdpmInputError, match="folder not found"):
        list_volumes(tmp_path / "nowhere")
    make_fastmri_file("x.h5")
    (tmp_path / "dup").mkdir()
    make_fastmri_file("dup/x.h5")
    with pytest.raises(LdpmInputError, match="two files named x.h5"):
        list_volumes(tmp_path)


def test_a_volume_narrower_than_the_crop_is_cropped_to_its_width(make_fastmri_file, tmp_path):
    """As fastMRI's transforms do for narrow volumes ("FLAIR 203"): the square centre crop of the
    image's own width, zero-padded back to the crop size; the store and manifest say so."""
    import pandas as pd

    from ldpm.data import build_manifest
    from ldpm.data.store import read_manifest

    narrow = make_fastmri_file("file_brain_AXFLAIR_narrow.h5", shape=(32, 12))
    vol = read_volume(narrow, crop_size=16, drop_last_slices=3)
    assert vol.targets.shape == (2, 16, 16) and vol.meta["crop_width"] == 12
    with h5py.File(narrow) as f:
        image = rss(ifft2c(f["kspace"][0]), coil_axis=0)
    np.testing.assert_allclose(vol.targets[0, 2:14, 2:14], center_crop(image, (12, 12)), rtol=1e-5)
    assert not vol.targets[0, :2].any() and not vol.targets[0, :, 14:].any()

    wide = make_fastmri_file("file_brain_AXT2_wide.h5", patient_id="p002")
    stores = [preprocess_volume(p, tmp_path / "stores" / f"{p.stem}.h5", 16, 3) for p in (narrow, wide)]
    with h5py.File(stores[0]) as f:
        assert int(f.attrs["crop_width"]) == 12
    build_manifest(stores, tmp_path / "manifest.csv", {"train": 1.0, "val": 0.0, "test": 0.0}, seed=0)
    df = read_manifest(tmp_path / "manifest.csv")
    widths = df.drop_duplicates("volume").set_index("volume")["crop_width"].to_dict()
    assert widths == {"file_brain_AXFLAIR_narrow": 12, "file_brain_AXT2_wide": 16}
    raw = pd.read_csv(tmp_path / "manifest.csv").astype({"crop_width": object})
    raw.loc[0, "crop_width"] = "twelve"
    raw.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(LdpmInputError, match="crop_width 'twelve', not a positive integer"):
        read_manifest(tmp_path / "bad.csv")
