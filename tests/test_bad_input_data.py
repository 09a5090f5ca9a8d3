"""Degenerate, non-finite and unreadable data: each step refuses it with one line naming the
file (and slice) and the fix, exit code 2, no traceback and no output file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from conftest import write_fastmri_file
from ldpm.cli import main
from ldpm.data import build_manifest, preprocess_volume, read_manifest, write_test_shard
from ldpm.data.store import raw_sources
from ldpm.errors import LdpmInputError

MANIFEST_ROW = {"volume": "vol_a", "slice": 0, "subject": "s0", "anatomy": "brain",
                "contrast": "T1", "field_strength": 3.0, "crop_width": 16, "volume_max": 1.0,
                "store": "vol_a.h5", "split": "test"}


def refused(capsys, argv: list[str], *names: str) -> str:
    """Run ``ldpm argv``: exit code 2 and a single ``error:`` line holding every name and a Fix."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "Fix:" in lines[0], err
    for name in names:
        assert name in lines[0], (name, err)
    return lines[0]


def nothing_written(folder: Path, *finals: Path) -> None:
    """No output under its final name, and no temporary sibling left in ``folder``."""
    for final in finals:
        assert not final.exists()
    if folder.exists():
        assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def _kspace(seed: int = 0, shape=(5, 2, 32, 16)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)


def _preprocess(tmp_path, src: Path) -> tuple[list[str], Path]:
    out = tmp_path / "slices" / f"{src.stem}.h5"
    return (["preprocess", "--input", str(src), "--output", str(out), "--crop-size", "16",
             "--drop-last-slices", "3"], out)


# ------------------------------------------------------------------------------- preprocess
def _all_zero(tmp_path):
    return write_fastmri_file(tmp_path / "file_brain_AXT2_zero.h5",
                              kspace=np.zeros((5, 2, 32, 16), np.complex64)), "volume max 0"


def _one_zero_slice(tmp_path):
    k = _kspace()
    k[1] = 0
    return write_fastmri_file(tmp_path / "file_brain_AXT2_zslice.h5", kspace=k), "slice 1"


def _no_coils(tmp_path):
    return write_fastmri_file(tmp_path / "file_brain_AXT2_nocoil.h5",
                              kspace=np.zeros((5, 0, 32, 16), np.complex64)), "0 coils"


def _field(tesla):
    def build(tmp_path):
        path = write_fastmri_file(tmp_path / "file_brain_AXT2_fs.h5", field_strength=tesla)
        return path, f"systemFieldStrength_T is {float(tesla)} T"
    return build


def _overflowing_kspace(tmp_path):
    k = _kspace()
    k[1] = 3e38  # finite in float32, but its RSS image is not
    return write_fastmri_file(tmp_path / "file_brain_AXT2_big.h5", kspace=k), "slice 1"


PREPROCESS_CASES = {
    "all_zero_volume": _all_zero, "all_zero_slice": _one_zero_slice, "zero_coils": _no_coils,
    "field_negative": _field(-7), "field_nan": _field("nan"), "field_zero": _field(0),
    "field_7T": _field(7.0), "overflowing_kspace": _overflowing_kspace,
}


@pytest.mark.parametrize("case", sorted(PREPROCESS_CASES))
def test_preprocess_refuses_degenerate_volumes(tmp_path, capsys, case):
    src, problem = PREPROCESS_CASES[case](tmp_path)
    argv, out = _preprocess(tmp_path, src)
    refused(capsys, argv, src.name, problem)
    nothing_written(out.parent, out)


def test_field_strength_buckets(tmp_path):
    """Scanner values of both buckets pass; values of neither bucket are refused."""
    for tesla, nominal in [(1.494, 1.5), (2.1, 1.5), (2.89362, 3.0), (3.0, 3.0)]:
        src = write_fastmri_file(tmp_path / f"file_brain_AXT2_{tesla}.h5", field_strength=tesla)
        with h5py.File(preprocess_volume(src, tmp_path / f"s{tesla}.h5", 16, 3)) as f:
            assert f.attrs["field_strength"] == nominal
    for tesla in (-7, 0.5, 7.0, "nan", "inf"):
        src = write_fastmri_file(tmp_path / f"file_brain_AXT2_{tesla}.h5", field_strength=tesla)
        with pytest.raises(LdpmInputError, match="outside the 1.0-3.5 T"):
            preprocess_volume(src, tmp_path / f"s{tesla}.h5", 16, 3)


# ------------------------------------------------------------------------------- manifest
def _store(path: Path, volume_max: float = 1.0, target=None) -> Path:
    with h5py.File(path, "w") as f:
        f["target"] = np.ones((2, 16, 16), np.float32) if target is None else target
        f["slice_index"] = np.arange(2, dtype=np.int64)
        f.attrs.update({"volume": path.stem, "source_file": "raw.h5", "anatomy": "brain",
                        "contrast": "T1", "field_strength": 3.0, "subject": "s0", "crop_width": 16,
                        "volume_max": volume_max})
    return path


@pytest.mark.parametrize("case, problem", [("zero_max", "volume_max is 0.0"),
                                           ("junk", "not a readable HDF5"),
                                           ("truncated", "not a readable HDF5")])
def test_manifest_refuses_bad_stores(tmp_path, capsys, case, problem):
    store = tmp_path / "vol_b.h5"
    good = _store(tmp_path / "vol_a.h5")
    if case == "zero_max":
        _store(store, volume_max=0.0)
    elif case == "junk":
        store.write_bytes(b"\x89HDF junk, not HDF5 at all")
    elif case == "truncated":
        data = _store(store, target=np.ones((2, 64, 64), np.float32)).read_bytes()
        store.write_bytes(data[:len(data) // 3])
    out = tmp_path / "m" / "manifest.csv"
    refused(capsys, ["manifest", "--stores", str(good), str(store), "--output", str(out),
                     "--split-fractions", '{"train": 0.5, "val": 0.0, "test": 0.5}',
                     "--seed", "0"], store.name, problem)
    nothing_written(out.parent, out)


def _manifest(tmp_path, case: str) -> tuple[Path, str]:
    path = tmp_path / "manifest.csv"
    if case == "binary":
        path.write_bytes(b"\xff\xfe\x00\x81 not a csv \x00\xc3")
        return path, "not a readable manifest CSV"
    if case == "empty":
        path.write_text("")
        return path, "empty file"
    row = dict(MANIFEST_ROW)
    if case == "no_columns":
        row.pop("volume_max")
        row.pop("store")
        problem = "lacks columns ['store', 'volume_max']"
    elif case == "zero_volume_max":
        row["volume_max"] = 0.0
        problem = "has volume_max '0.0', not a positive number"
    elif case == "bad_slice":
        row["slice"] = "three"
        problem = "line 2 (volume vol_a) has slice 'three'"
    else:
        row["split"] = "tset"
        problem = "unknown split"
    pd.DataFrame([row]).to_csv(path, index=False)
    return path, problem


MANIFEST_CASES = ["binary", "empty", "zero_volume_max", "bad_slice", "bad_split"]


@pytest.mark.parametrize("case", MANIFEST_CASES)
def test_test_shard_refuses_a_bad_manifest(tmp_path, capsys, case):
    manifest, problem = _manifest(tmp_path, case)
    out = tmp_path / "shards" / "shard0.h5"
    refused(capsys, ["test-shard", "--manifest", str(manifest), "--shard", "0", "--n-shards",
                     "1", "--output", str(out), "--acceleration", "4", "--center-fraction",
                     "0.08", "--mask-seed", "1"], manifest.name, problem)
    nothing_written(out.parent, out)


def test_manifest_and_stores_can_move_together(tmp_path, monkeypatch):
    """Store paths are relative to the manifest, raw paths given relative to the store."""
    tree = tmp_path / "run"
    (tree / "raw").mkdir(parents=True)
    monkeypatch.chdir(tree)
    stores = []
    for i in range(2):
        write_fastmri_file(Path("raw") / f"file_brain_AXT2_{i}.h5", patient_id=f"s{i}", seed=i)
        stores.append(preprocess_volume(Path("raw") / f"file_brain_AXT2_{i}.h5",
                                        Path("data/slices") / f"file_brain_AXT2_{i}.h5", 16, 3))
    build_manifest(stores, Path("data/manifest.csv"), {"train": 0.5, "val": 0.0, "test": 0.5}, 0)
    assert set(pd.read_csv("data/manifest.csv")["store"]) == {
        os.path.join("slices", f"file_brain_AXT2_{i}.h5") for i in range(2)}

    moved = tmp_path / "elsewhere" / "run2"
    moved.parent.mkdir()
    shutil.move(str(tree), str(moved))
    monkeypatch.chdir(tmp_path)  # neither the old folder nor the manifest's own
    manifest = moved / "data" / "manifest.csv"
    assert all(Path(s).is_file() for s in read_manifest(manifest)["store"])
    shard = write_test_shard(manifest, 0, 1, tmp_path / "shard.h5", 4, 0.25, 1)
    with h5py.File(shard) as f:
        assert len(f["target"]) == 2
    sources = raw_sources(manifest)
    assert sorted(sources) == ["file_brain_AXT2_0", "file_brain_AXT2_1"]
    assert all(p.is_file() and moved in p.absolute().parents for p in sources.values())


# ------------------------------------------------------------------------------- reconstruct
def _shard(path: Path, target=None, mask=None, with_mask=True) -> Path:
    target = np.ones((2, 16, 16), np.float32) if target is None else target
    with h5py.File(path, "w") as f:
        f["target"] = target
        if with_mask:
            f["mask"] = np.ones((len(target), 16), np.float32) if mask is None else mask
        f["volume"] = np.array(["vol_a"] * len(target), dtype=h5py.string_dtype())
        f["slice"] = np.arange(3, 3 + len(target), dtype=np.int64)
    return path


def _nan_target():
    t = np.ones((2, 16, 16), np.float32)
    t[1, 2, 3] = np.nan
    return t


SHARD_CASES = {
    "missing": (lambda p: p, "test shard not found"),
    "junk": (lambda p: (p.write_text("junk"), p)[1], "not a readable HDF5"),
    "no_mask": (lambda p: _shard(p, with_mask=False), "no 'mask'"),
    "mask_width": (lambda p: _shard(p, mask=np.ones((2, 12), np.float32)),
                   "mask width 12 differs from the k-space width 16"),
    "nan_target": (lambda p: _shard(p, target=_nan_target()), "volume vol_a slice 4"),
}


@pytest.mark.parametrize("case", sorted(SHARD_CASES))
def test_reconstruct_refuses_a_bad_shard(tmp_path, capsys, case):
    build, problem = SHARD_CASES[case]
    shard = build(tmp_path / "shard0.h5")
    out = tmp_path / "recon" / "zero_filled" / "shard0.h5"
    refused(capsys, ["reconstruct", "--method", "zero_filled", "--shard-data", str(shard),
                     "--output", str(out), "--device", "cpu"], shard.name, problem)
    nothing_written(out.parent, out)


# ------------------------------------------------------------------------------- evaluate
def _evaluate_inputs(tmp_path, bad: float | None = None, recon_file: str = "ok"):
    rng = np.random.default_rng(0)
    target = (1 + rng.random((3, 16, 16))).astype(np.float32)
    data = _shard(tmp_path / "test_0.h5", target=target)
    recon = tmp_path / "recon_0.h5"
    images = target + 0.01
    if bad is not None:
        images[2, 5, 5] = bad
    with h5py.File(recon, "w") as f:
        f["recon"] = images
        f["volume"] = np.array(["vol_a"] * 3, dtype=h5py.string_dtype())
        f["slice"] = np.arange(3, 6, dtype=np.int64)
    if recon_file == "truncated":
        recon.write_bytes(recon.read_bytes()[:3000])
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame([{**MANIFEST_ROW, "slice": s} for s in range(3, 6)]).to_csv(manifest,
                                                                            index=False)
    return data, recon, manifest


def _evaluate(data, recon, manifest, out_dir):
    return ["evaluate", "--method", "method_x", "--recon", str(recon), "--data", str(data),
            "--manifest", str(manifest), "--out-dir", str(out_dir)]


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_evaluate_refuses_a_non_finite_reconstruction(tmp_path, capsys, bad):
    data, recon, manifest = _evaluate_inputs(tmp_path, bad)
    out_dir = tmp_path / "metrics"
    line = refused(capsys, _evaluate(data, recon, manifest, out_dir), recon.name,
                   "volume vol_a slice 5", "method method_x")
    assert "non-finite" in line.split("Fix:")[1]
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_evaluate_refuses_a_truncated_reconstruction(tmp_path, capsys):
    data, recon, manifest = _evaluate_inputs(tmp_path, recon_file="truncated")
    out_dir = tmp_path / "metrics"
    refused(capsys, _evaluate(data, recon, manifest, out_dir), recon.name, "not a readable HDF5")
    assert not out_dir.exists()


@pytest.mark.parametrize("case", ["binary", "no_columns"])
def test_evaluate_refuses_a_bad_manifest(tmp_path, capsys, case):
    data, recon, _ = _evaluate_inputs(tmp_path)
    (tmp_path / "m").mkdir()
    manifest, problem = _manifest(tmp_path / "m", case)
    out_dir = tmp_path / "metrics"
    refused(capsys, _evaluate(data, recon, manifest, out_dir), manifest.name, problem)
    assert not out_dir.exists()


def test_a_bad_file_is_one_line_in_a_real_process(tmp_path):
    """The console script itself: one stderr line, exit 2, no Python traceback."""
    import subprocess
    import sys

    shard = _shard(tmp_path / "shard0.h5", with_mask=False)
    out = tmp_path / "r.h5"
    proc = subprocess.run([sys.executable, "-m", "ldpm.cli", "reconstruct", "--method",
                           "zero_filled", "--shard-data", str(shard), "--output", str(out),
                           "--device", "cpu"], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("error:") == 1
    assert "shard0.h5" in proc.stderr and not out.exists()


def test_library_error_type(tmp_path):
    src, _ = _all_zero(tmp_path)
    with pytest.raises(LdpmInputError, match="volume max 0"):
        preprocess_volume(src, tmp_path / "s.h5", 16, 3)
