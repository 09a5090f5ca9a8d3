"""Embedded default: fastMRI-format files from the real MNI152 anatomy, read like fastMRI."""

import re

import h5py
import numpy as np
import pytest

from ldpm.data import (build_subject, embedded_subjects, embedded_volume_names,
                       embedded_volumes, read_volume, subject_of, subject_volume_names)
from ldpm.data.embedded import SOURCE, subject_anatomy
from ldpm.errors import LdpmInputError

CFG = {"n_subjects": 3, "slices_per_volume": 2, "n_coils": 3, "noise_std": 0.002,
       "contrasts": ["FLAIR", "T1", "T1PRE", "T1POST", "T2"], "field_strengths": [1.5, 3.0]}
CROP, DROP, SEED = 64, 3, 7


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Subjects 0 and 1, and subject 0 again in another folder."""
    root = tmp_path_factory.mktemp("embedded")
    return {key: build_subject(i, root / key, CFG, CROP, DROP, SEED)
            for key, i in (("s0", 0), ("s1", 1), ("s0_again", 0))}


def _by_contrast(paths):
    return {read_volume(p, CROP, DROP).meta["contrast"]: read_volume(p, CROP, DROP)
            for p in paths}


def test_names():
    names = embedded_volume_names(CFG)
    assert len(names) == len(set(names)) == 15
    assert names[:2] == ["file_brain_AXFLAIR_1p5T_s000", "file_brain_AXT1_1p5T_s000"]
    assert all(re.fullmatch(r"file_brain_AX[A-Z0-9]+_(1p5T|3T)_s\d{3}", n) for n in names)
    assert embedded_subjects(CFG) == ["s000", "s001", "s002"]
    assert subject_volume_names(CFG, 1) == [n for n in names if subject_of(n) == "s001"]
    assert all("_3T_" in n for n in subject_volume_names(CFG, 1))
    vols = embedded_volumes(CFG)
    assert [v.name for v in vols] == names
    assert vols[7].subject == "s001" and vols[7].subject_index == 1
    assert (vols[7].contrast, vols[7].field_strength) == ("T1PRE", 3.0)


def test_files_read_like_fastmri(built):
    paths = built["s1"]
    assert [p.stem for p in paths] == subject_volume_names(CFG, 1)
    for path in paths:
        vol = read_volume(path, CROP, DROP)
        assert vol.targets.shape == (2, CROP, CROP) and vol.targets.dtype == np.float32
        assert vol.meta["anatomy"] == "brain" and vol.meta["field_strength"] == 3.0
        assert vol.meta["subject"] == "s001" and vol.meta["volume"] == path.stem
        assert path.stem == f"file_brain_AX{vol.meta['contrast']}_3T_s001"
        with h5py.File(path) as f:
            assert f["kspace"].shape == (5, 3, 2 * CROP, CROP)
            assert f["kspace"].dtype == np.complex64
            np.testing.assert_array_equal(vol.targets, f["reconstruction_rss"][:2])
            assert f.attrs["ldpm_source"] == SOURCE
            assert f.attrs["max"] == pytest.approx(f["reconstruction_rss"][()].max())
            assert b"ldpm-embedded" in f["ismrmrd_header"][()]
    assert {read_volume(p, CROP, DROP).meta["contrast"] for p in paths} == set(CFG["contrasts"])


def test_targets_are_the_template_anatomy(built):
    t1 = _by_contrast(built["s0"])["T1"].targets
    anatomy = subject_anatomy(0, 5, CROP, SEED)
    unwarped = subject_anatomy(0, 5, CROP, SEED, warp=False)
    assert t1.std() > 0.1 * t1.max()
    assert np.corrcoef(t1.ravel(), anatomy["t1"][:2].ravel())[0, 1] > 0.9
    assert np.corrcoef(t1.ravel(), unwarped["t1"][:2].ravel())[0, 1] > 0.5
    brain = anatomy["gm"] + anatomy["wm"] + anatomy["csf"] > 0.5
    rows = np.flatnonzero(brain[0].any(axis=1))
    assert 0.6 * CROP < np.ptp(rows) + 1 <= CROP  # the head fills most of the field of view
    background = t1[:, ~brain[:2].any(axis=0)]
    assert 0 < background.mean() < 0.05 * t1.max()  # noise only


def test_same_seed_is_bit_identical_and_subjects_differ(built):
    for a, b in zip(built["s0"], built["s0_again"]):
        with h5py.File(a) as fa, h5py.File(b) as fb:
            np.testing.assert_array_equal(fa["kspace"][()], fb["kspace"][()])
    t1_s0 = _by_contrast(built["s0"])["T1"].targets
    t1_s1 = _by_contrast(built["s1"])["T1"].targets
    assert np.abs(t1_s0 / t1_s0.max() - t1_s1 / t1_s1.max()).mean() > 0.02


def test_contrasts_follow_tissue_physics(built):
    vols = _by_contrast(built["s0"])
    anatomy = {k: v[:2] for k, v in subject_anatomy(0, 5, CROP, SEED).items()}

    def weighted(img, w):
        return float((img * w).sum() / w.sum())

    def csf_over_wm(contrast):
        img = vols[contrast].targets
        return weighted(img, anatomy["csf"]) / weighted(img, anatomy["wm"])

    assert csf_over_wm("T2") > 1.2  # CSF bright in T2
    assert csf_over_wm("T1") < 0.8 and csf_over_wm("FLAIR") < 0.8  # dark in T1 and FLAIR
    pre, post = vols["T1PRE"].targets, vols["T1POST"].targets
    inner = (1 - anatomy["rim"]) * (anatomy["gm"] + anatomy["wm"])
    gain_rim = weighted(post, anatomy["rim"]) / weighted(pre, anatomy["rim"])
    gain_inner = weighted(post, inner) / weighted(pre, inner)
    assert gain_rim > 1.1 * gain_inner  # gadolinium enhances the surface rim
    for a in CFG["contrasts"]:
        for b in CFG["contrasts"]:
            if a < b:
                x, y = vols[a].targets, vols[b].targets
                assert not np.allclose(x / x.max(), y / y.max(), atol=1e-3), (a, b)


def test_subject_out_of_range(tmp_path):
    with pytest.raises(LdpmInputError, match="n_subjects"):
        build_subject(3, tmp_path, CFG, CROP, DROP, SEED)


def test_ood_volumes_are_dipys_real_scans_read_like_fastmri(tmp_path):
    from ldpm.data.ood import VOLUMES, build_ood, ood_slices

    paths = build_ood(tmp_path, CFG, CROP, DROP, SEED)
    assert [p.stem for p in paths] == list(VOLUMES)
    n_real = {}
    for path in paths:
        vol = read_volume(path, CROP, DROP)
        real = ood_slices(path.stem, CROP)
        n_real[path.stem] = len(vol.targets)
        assert vol.meta["anatomy"] == "brain" and vol.meta["subject"].startswith("dipy_")
        assert np.isfinite(vol.targets).all() and vol.targets.shape[1:] == (CROP, CROP)
        # the RSS target is the real scan (up to scale and the simulated noise)
        for target, image in zip(vol.targets, real):
            assert np.corrcoef(target.ravel(), image.ravel())[0, 1] > 0.98
    # every real slice is kept: the one T1 slice, and the b0 volume less the dropped slices
    assert n_real == {"file_brain_T1COR_dipy": 1, "file_brain_B0EPI_dipy": 10 - DROP}
    # not the embedded template: another contrast, read from the files dipy ships
    assert {read_volume(p, CROP, DROP).meta["contrast"] for p in paths} == {"T1COR", "B0EPI"}


def test_ood_val_is_two_other_real_scans(tmp_path):
    """OOD-val (for choosing recipes) shares no scan or volume name with Table III's OOD set; a
    3-D volume (no series axis) is read as well as a 4-D series' first volume."""
    from ldpm.data.ood import VAL_VOLUMES, VOLUMES, build_ood

    paths = build_ood(tmp_path / "val", CFG, CROP, DROP, SEED, val=True)
    assert [p.stem for p in paths] == list(VAL_VOLUMES) and not set(VAL_VOLUMES) & set(VOLUMES)
    assert not {f for f, *_ in VAL_VOLUMES.values()} & {f for f, *_ in VOLUMES.values()}
    n = {p.stem: len(read_volume(p, CROP, DROP).targets) for p in paths}
    assert n == {"file_brain_ANISO_dipy": 24 - DROP, "file_brain_PIESNO_dipy": 14 - DROP}
