"""Slice stores, the subject-split manifest, test shards and the training views."""

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from ldpm.data.dataset import SliceDataset
from ldpm.data import (build_manifest, load_split, preprocess_volume, read_shard,
                       read_volume, split_subjects, write_test_shard)
from ldpm.errors import LdpmInputError
from ldpm.mri import mask_for_slice

FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}
N_SUBJECTS = 12  # 6 at 1.5 T, 6 at 3 T; two contrasts each


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    from conftest import write_fastmri_file

    raw = tmp_path_factory.mktemp("raw")
    out = tmp_path_factory.mktemp("stores")
    paths = []
    for i in range(N_SUBJECTS):
        tesla = 1.494 if i % 2 == 0 else 2.89362
        for j, contrast in enumerate(["T1", "T2"]):
            name = f"file_brain_AX{contrast}_{i:03d}.h5"
            src = write_fastmri_file(raw / name, acquisition=f"AX{contrast}", seed=10 * i + j,
                                     field_strength=tesla, patient_id=f"subj{i:02d}")
            paths.append(preprocess_volume(src, out / name, crop_size=16, drop_last_slices=3))
    return paths


@pytest.fixture(scope="module")
def manifest(stores, tmp_path_factory):
    csv = tmp_path_factory.mktemp("manifest") / "manifest.csv"
    build_manifest(stores, csv, FRACTIONS, seed=0)
    return csv


def test_store_contents(stores):
    with h5py.File(stores[0]) as f:
        vol = read_volume(f.attrs["source_file"], crop_size=16, drop_last_slices=3)
        np.testing.assert_array_equal(f["target"][()], vol.targets)
        np.testing.assert_array_equal(f["slice_index"][()], [0, 1])
        assert f["target"].dtype == np.float32
        assert f.attrs["volume"] == "file_brain_AXT1_000" and f.attrs["subject"] == "subj00"
        assert (f.attrs["anatomy"], f.attrs["contrast"]) == ("brain", "T1")
        assert f.attrs["field_strength"] == 1.5
        assert f.attrs["volume_max"] == pytest.approx(vol.targets.max())


def test_manifest_split_by_subject_and_stratified(manifest, stores):
    df = pd.read_csv(manifest)
    assert list(df.columns) == ["volume", "slice", "subject", "anatomy", "contrast",
                                "field_strength", "crop_width", "volume_max", "store", "split"]
    assert len(df) == 2 * len(stores)
    assert (df.groupby("subject")["split"].nunique() == 1).all()  # no subject in two splits
    per_group = df.drop_duplicates("subject").groupby(["field_strength", "split"]).size()
    for tesla in (1.5, 3.0):  # 6 subjects each: 4 train, 1 val, 1 test
        assert per_group[tesla].to_dict() == {"train": 4, "val": 1, "test": 1}


def test_ood_manifest_puts_every_volume_in_test_and_trains_on_none(stores, tmp_path):
    """``split="test"`` (the out-of-distribution set's manifest): every slice is test, so
    :func:`load_split` gives training and val nothing from it."""
    from ldpm.data.store import load_split

    df = build_manifest(stores[:3], tmp_path / "ood.csv", FRACTIONS, seed=0, split="test")
    assert set(df["split"]) == {"test"} and len(df) == 2 * 3
    assert all(len(load_split(tmp_path / "ood.csv", split)[1]) == 0 for split in ("train", "val"))


def test_manifest_is_deterministic(manifest, stores, tmp_path):
    again = tmp_path / "again.csv"
    build_manifest(list(reversed(stores)), again, FRACTIONS, seed=0)
    assert again.read_bytes() == manifest.read_bytes()
    splits = []
    for seed in range(4):
        build_manifest(stores, tmp_path / f"m{seed}.csv", FRACTIONS, seed=seed)
        splits.append(tuple(pd.read_csv(tmp_path / f"m{seed}.csv")["split"]))
    assert len(set(splits)) > 1  # the seed matters


def test_split_small_groups():
    groups = {"a": 1.5, "b": 1.5, "c": 3.0, "d": 3.0, "e": 3.0, "f": 7.0}
    split = split_subjects(groups, FRACTIONS, seed=3)
    for members in (["a", "b"], ["c", "d", "e"]):
        got = sorted(split[m] for m in members)
        assert got.count("test") == 1 and "train" in got
    assert split["f"] == "train"  # a group of one subject can only train


def test_shards_partition_the_test_set(manifest, tmp_path):
    test_targets, test_rows = load_split(manifest, "test")
    expected = {(v, s): t for v, s, t in zip(test_rows["volume"], test_rows["slice"],
                                              test_targets)}
    seen, volumes = {}, []
    for shard in range(3):
        path = write_test_shard(manifest, shard, 3, tmp_path / f"shard{shard}.h5",
                                acceleration=8, center_fraction=0.04, mask_seed=2024)
        data = read_shard(path)
        assert data["acceleration"] == 8 and data["mask_seed"] == 2024
        assert data["center_fraction"] == 0.04 and data["split"] == "test"
        assert data["target"].shape == (len(data["volume"]), 16, 16)
        volumes.append(set(data["volume"]))
        for i, (v, s) in enumerate(zip(data["volume"], data["slice"])):
            assert (v, s) not in seen
            seen[(v, s)] = True
            np.testing.assert_array_equal(data["target"][i], expected[(v, s)])
            np.testing.assert_array_equal(data["mask"][i],
                                          mask_for_slice(v, int(s), 16, 8, 0.04, base_seed=2024))
    assert set(seen) == set(expected)
    assert sum(len(v) for v in volumes) == len(set().union(*volumes))  # volumes not split


def test_empty_shard(manifest, tmp_path):
    n_test_volumes = pd.read_csv(manifest).query("split == 'test'")["volume"].nunique()
    path = write_test_shard(manifest, n_test_volumes, n_test_volumes + 1, tmp_path / "e.h5",
                            acceleration=4, center_fraction=0.08, mask_seed=1)
    data = read_shard(path)
    assert data["target"].shape == (0, 16, 16) and data["mask"].shape == (0, 16)
    assert data["volume"] == [] and data["slice"].shape == (0,)
    with pytest.raises(LdpmInputError, match="shard 5"):
        write_test_shard(manifest, 5, 2, tmp_path / "bad.h5", 4, 0.08, 1)


def test_load_split_and_dataset(manifest):
    targets, rows = load_split(manifest, "train")
    assert targets.shape == (len(rows), 16, 16) and set(rows["split"]) == {"train"}
    ds = SliceDataset(manifest, "train")
    assert len(ds) == len(rows)
    x = ds[3]
    assert x.shape == (1, 16, 16) and x.dtype == torch.float32
    np.testing.assert_array_equal(x[0].numpy(), targets[3])
    assert len(ds._files) == 1  # only the store of slice 3 is open
    ds[2]  # same volume as slice 3: no other store opened
    assert len(ds._files) == 1
    normed = SliceDataset(manifest, "train", normalize=True)[3]
    assert torch.allclose(normed, x / rows["volume_max"][3])
    with pytest.raises(LdpmInputError, match="unknown split"):
        load_split(manifest, "validation")


def test_folder_split_takes_fastmri_own_folders(tmp_path):
    """``data.split: folders``: every volume of multicoil_val/ is test; multicoil_train/'s are
    split into train and val by subject; a file in another folder, or a subject in both
    folders, is refused."""
    from conftest import write_fastmri_file

    stores = []
    for folder in ("multicoil_train", "multicoil_val", "elsewhere"):
        (tmp_path / "fastmri" / folder).mkdir(parents=True)
    for folder, n in (("multicoil_train", 6), ("multicoil_val", 2)):
        for i in range(n):
            raw = write_fastmri_file(tmp_path / "fastmri" / folder / f"file_brain_AXT2_{folder}_{i}.h5",
                                     patient_id=f"{folder}_{i}", seed=i)
            stores.append(preprocess_volume(raw, tmp_path / "stores" / raw.name, 16, 3))
    df = build_manifest(stores, tmp_path / "manifest.csv", {"train": 0.6, "val": 0.2, "test": 0.2},
                        seed=0, split="folders")
    by_volume = df.drop_duplicates("volume").set_index("volume")["split"]
    val_folder = by_volume[by_volume.index.str.contains("multicoil_val")]
    train_folder = by_volume[by_volume.index.str.contains("multicoil_train")]
    assert set(val_folder) == {"test"} and len(val_folder) == 2
    assert set(train_folder) == {"train", "val"}
    leak = write_fastmri_file(tmp_path / "fastmri" / "multicoil_val" / "file_brain_AXT2_leak.h5",
                              patient_id="multicoil_train_0", seed=9)
    with pytest.raises(LdpmInputError, match="subject 'multicoil_train_0' has volumes in both"):
        build_manifest([*stores, preprocess_volume(leak, tmp_path / "stores" / leak.name, 16, 3)],
                       tmp_path / "m1.csv", {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0,
                       split="folders")
    other = write_fastmri_file(tmp_path / "fastmri" / "elsewhere" / "file_brain_AXT2_x.h5", patient_id="x")
    stores.append(preprocess_volume(other, tmp_path / "stores" / other.name, 16, 3))
    with pytest.raises(LdpmInputError, match="neither a \\*_train nor a \\*_val folder"):
        build_manifest(stores, tmp_path / "m2.csv", {"train": 0.6, "val": 0.2, "test": 0.2},
                       seed=0, split="folders")
