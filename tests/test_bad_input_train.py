"""Bad input to training and checkpoints: a non-finite loss, unreadable last.pt and final/
files, unwritable output paths, stale temporary files, and the modes of written files."""

from __future__ import annotations

import json
import math
import os
import pickle
import stat
from pathlib import Path

import pytest
import torch
from conftest import TINY_VAE, smooth_slices

import ldpm.train.baselines as baselines_mod
import ldpm.train.sketcher as sketcher_mod
from ldpm.cli import main
from ldpm.errors import LdpmInputError
from ldpm.io import write_text_atomic
from ldpm.checkpoints import load_baseline, load_sketcher, load_vae
from ldpm.train import train, train_sketcher, train_vae
from ldpm.train.baselines import train_baseline

TINY_SWIN = {"embed_dim": 8, "depths": [1], "num_heads": [2], "window_size": 8}
TINY_UNET = {"chans": 4, "num_pool_layers": 2, "drop_prob": 0.0}
MASK = {"acceleration": 4, "center_fraction": 0.08}
CONST = {"lr_schedule": "constant", "warmup": 0}
SKETCHER = {**CONST, "model": TINY_SWIN, "lr": 3e-3, "batch_size": 2, "crop": 32, "ckpt_every": 2,
            "masks": MASK}
VAE = {**CONST, "model": TINY_VAE, "lr": 3e-3, "disc_lr": 1e-3, "batch_size": 2, "crop": 32,
       "ckpt_every": 2, "disc": {"ndf": 8, "n_layers": 1}, "disc_start": None, "masks": MASK}
UNET = {"model": TINY_UNET, "crop": None, "batch_size": 2, "ckpt_every": 1, "n_steps": 3}


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return smooth_slices(disc=False)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """A manifest of four tiny subjects (16x16 slices), two of them in the training split."""
    from conftest import write_fastmri_file

    from ldpm.data.store import build_manifest, preprocess_volume

    raw, out = tmp_path_factory.mktemp("raw"), tmp_path_factory.mktemp("stores")
    stores = []
    for i in range(4):
        name = f"file_brain_AXT1_{i:03d}.h5"
        src = write_fastmri_file(raw / name, acquisition="AXT1", seed=i, patient_id=f"s{i}")
        stores.append(preprocess_volume(src, out / name, crop_size=16, drop_last_slices=3))
    csv = out / "manifest.csv"
    build_manifest(stores, csv, {"train": 0.5, "val": 0.0, "test": 0.5}, seed=0)
    return csv


def _train_unet_cli(manifest: Path, out_dir: Path, **overrides) -> int:
    return main(["train", "--stage", "unet", "--manifest", str(manifest), "--out-dir", str(out_dir),
                 "--overrides", json.dumps({**UNET, **overrides}), "--seed", "0",
                 "--masks", json.dumps(MASK), "--device", "cpu"])


def _one_error(err: str, command: str = "train") -> str:
    """The one error line of ``err`` (and no traceback)."""
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"ldpm {command}: error: ") and "Fix:" in lines[0]
    return lines[0]


def _tiny_loop(ckpt_dir: Path, n_steps: int = 6, step_hook=None, ckpt_every: int = 2) -> dict:
    """The shared loop on a seeded linear model; ``final/w.pt`` holds its weights."""
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)

    def step_fn(step, gen):
        x = torch.randn(8, 4, generator=gen)
        loss = ((net(x) - x.sum(1, keepdim=True)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step_hook is not None:
            step_hook(step, net)
        return {"loss": loss.item()}

    return train(step_fn, {"net": net}, {"opt": opt}, ckpt_dir, n_steps, 1,
                 lambda d: torch.save(net.state_dict(), d / "w.pt"), config={"ckpt_every": ckpt_every},
                 log=False)


# ------------------------------------------------------------------------- non-finite loss

def test_nan_loss_stops_the_stage_keeps_the_last_checkpoint_and_writes_no_final(
        images, tmp_path, monkeypatch):
    real = sketcher_mod.sketcher_loss

    def nan_from_step_3(model, x, masks, seed, step, *args, **kwargs):
        loss = real(model, x, masks, seed, step, *args, **kwargs)
        return loss * float("nan") if step >= 3 else loss

    monkeypatch.setattr(sketcher_mod, "sketcher_loss", nan_from_step_3)
    with pytest.raises(LdpmInputError) as e:
        train_sketcher(images, SKETCHER, tmp_path, seed=0, n_steps=6, log=False)
    msg = str(e.value)
    assert "'sketcher'" in msg and "step 3" in msg and "not finite" in msg and "lower the learning rate" in msg
    assert "\n" not in msg
    assert not (tmp_path / "final").exists() and not (tmp_path / "meta.json").exists()
    ckpt = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == 2 and all(math.isfinite(r["loss"]) for r in ckpt["rows"])


def test_nan_loss_through_the_cli_exits_2_with_one_error_line(manifest, tmp_path, monkeypatch,
                                                               capsys):
    real, calls = baselines_mod.compute_loss, []

    def nan_from_the_second_step(*args, **kwargs):
        loss, out = real(*args, **kwargs)
        calls.append(1)
        if len(calls) >= 2:
            loss = loss * float("inf")
            out = {**out, "loss": loss.item()}
        return loss, out

    monkeypatch.setattr(baselines_mod, "compute_loss", nan_from_the_second_step)
    assert _train_unet_cli(manifest, tmp_path / "unet") == 2
    line = _one_error(capsys.readouterr().err)
    assert "'baseline_unet'" in line and "step 1" in line and "loss=inf" in line
    assert not (tmp_path / "unet" / "final").exists()
    assert torch.load(tmp_path / "unet" / "last.pt", weights_only=True)["step"] == 1


def test_weights_that_become_infinite_are_not_checkpointed(tmp_path):
    def explode(step, net):
        if step == 3:
            with torch.no_grad():
                net.weight.fill_(float("inf"))

    with pytest.raises(LdpmInputError, match="weights of 'net' are not finite after step 3"):
        _tiny_loop(tmp_path, step_hook=explode)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 2
    assert not (tmp_path / "final").exists()


# ----------------------------------------------------------------------- unreadable last.pt

def _junk(path: Path, kind: str) -> None:
    if kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif kind == "junk":
        path.write_bytes(b"not a checkpoint at all")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "pickled object":  # refused by weights_only: not tensors/containers/numbers
        path.write_bytes(pickle.dumps(os.path.join))
    else:  # a readable torch file that is not a training checkpoint
        torch.save([1, 2, 3], path)


@pytest.mark.parametrize("kind", ["truncated", "junk", "empty", "pickled object", "foreign"])
def test_unreadable_last_pt_is_one_error_naming_it(kind, tmp_path):
    _tiny_loop(tmp_path, n_steps=4)
    _junk(tmp_path / "last.pt", kind)
    with pytest.raises(LdpmInputError) as e:
        _tiny_loop(tmp_path, n_steps=6)
    msg = str(e.value)
    assert msg.startswith(str(tmp_path / "last.pt")) and "delete" in msg and "\n" not in msg


def test_junk_last_pt_through_the_cli_is_one_error_line(manifest, tmp_path, capsys):
    out = tmp_path / "unet"
    out.mkdir()
    (out / "last.pt").write_bytes(b"\x80\x04junk")
    assert _train_unet_cli(manifest, out) == 2
    line = _one_error(capsys.readouterr().err)
    assert str(out / "last.pt") in line and "delete" in line


def test_last_pt_of_every_kind_of_stage_loads_weights_only(images, tmp_path):
    train_sketcher(images, SKETCHER, tmp_path / "s", seed=0, n_steps=2, log=False)
    train_baseline("unet", images, {**UNET, "n_steps": 2}, tmp_path / "u", seed=0, log=False)
    for d in ("s", "u"):
        ckpt = torch.load(tmp_path / d / "last.pt", map_location="cpu", weights_only=True)
        assert ckpt["step"] == 2


# -------------------------------------------------------------------- unreadable final/ files

@pytest.fixture(scope="module")
def trained(images, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trained")
    train_sketcher(images, SKETCHER, root / "sketcher", seed=0, n_steps=1, log=False)
    train_vae(images, VAE, root / "vae", seed=0, n_steps=1, log=False)
    train_baseline("unet", images, {**UNET, "n_steps": 1}, root / "unet", seed=0, log=False)
    return {"sketcher": root / "sketcher", "vae": root / "vae", "unet": root / "unet"}


def _broken_copy(src: Path, dst: Path, name: str, how: str) -> Path:
    import shutil

    shutil.copytree(src, dst)
    path = dst / "final" / name
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif how == "not an object":
        path.write_text("[1, 2]")
    else:
        path.write_bytes(b"\x00garbage{{{")
    return path


@pytest.mark.parametrize("stage,name,how", [
    ("sketcher", "model.safetensors", "garbage"), ("sketcher", "model.safetensors", "truncated"),
    ("sketcher", "config.json", "garbage"), ("sketcher", "config.json", "not an object"),
    ("vae", "diffusion_pytorch_model.safetensors", "garbage"), ("vae", "config.json", "garbage"),
    ("unet", "model.safetensors", "truncated"), ("unet", "config.json", "garbage"),
])
def test_unreadable_final_file_is_one_error_naming_it(stage, name, how, trained, tmp_path):
    bad = _broken_copy(trained[stage], tmp_path / stage, name, how)
    load = {"sketcher": load_sketcher, "vae": load_vae, "unet": load_baseline}[stage]
    with pytest.raises(LdpmInputError) as e:
        load(tmp_path / stage)
    msg = str(e.value)
    assert msg.startswith(str(bad)) and "train" in msg.split("Fix:")[1] and "\n" not in msg


def test_valid_json_config_that_does_not_fit_is_one_error(trained, tmp_path):
    import shutil

    shutil.copytree(trained["sketcher"], tmp_path / "s")
    (tmp_path / "s" / "final" / "config.json").write_text('{"embed_dim": 8}')
    with pytest.raises(LdpmInputError, match="cannot be loaded"):
        load_sketcher(tmp_path / "s")


def test_garbage_checkpoint_for_reconstruction_is_one_error_line(trained, tmp_path, capsys):
    import h5py
    import numpy as np

    bad = _broken_copy(trained["unet"], tmp_path / "unet", "model.safetensors", "garbage")
    shard = tmp_path / "shard.h5"
    with h5py.File(shard, "w") as f:
        f["target"] = np.ones((1, 32, 32), np.float32)
        f["mask"] = np.ones((1, 32), np.float32)
        f["volume"], f["slice"] = np.array([b"v0"]), np.arange(1)
    out = tmp_path / "recon.h5"
    assert main(["reconstruct", "--method", "unet", "--shard-data", str(shard), "--output", str(out),
                 "--checkpoint", f"unet={tmp_path / 'unet'}", "--device", "cpu"]) == 2
    line = _one_error(capsys.readouterr().err, "reconstruct")
    assert str(bad) in line and not out.exists()


# ------------------------------------------------------------------------ unwritable outputs

@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_output_folder_without_write_permission_exits_2(manifest, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert _train_unet_cli(manifest, ro / "unet") == 2
    finally:
        ro.chmod(0o700)
    line = _one_error(capsys.readouterr().err)
    assert str(ro / "unet") in line and "ermission denied" in line


def test_permission_denied_on_an_output_exits_2_with_one_error_line(manifest, tmp_path,
                                                                    monkeypatch, capsys):
    """As :func:`test_output_folder_without_write_permission_exits_2`, also when run as root:
    the folder's creation fails as it does for a user without write access."""
    denied = tmp_path / "ro" / "unet"
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if Path(self) == denied:
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    assert _train_unet_cli(manifest, denied) == 2
    line = _one_error(capsys.readouterr().err)
    assert line.startswith(f"ldpm train: error: {denied}: permission denied. Fix: ")


def test_permission_denied_on_an_atomic_write_names_the_output(tmp_path, monkeypatch, capsys):
    import ldpm.io

    def mkstemp(prefix="", suffix="", dir=None):
        raise PermissionError(13, "Permission denied", os.path.join(dir, f"{prefix}x1y2z3w4{suffix}"))

    monkeypatch.setattr(ldpm.io.tempfile, "mkstemp", mkstemp)
    out = tmp_path / "provenance.json"
    assert main(["provenance", "--output", str(out), "--config", "{}"]) == 2
    line = _one_error(capsys.readouterr().err, "provenance")
    assert line.startswith(f"ldpm provenance: error: {out}: permission denied. Fix: ")


def test_output_parent_that_is_a_file_exits_2(manifest, tmp_path, capsys):
    blocker = tmp_path / "models"
    blocker.write_text("a file, not a folder")
    assert _train_unet_cli(manifest, blocker / "unet") == 2
    line = _one_error(capsys.readouterr().err)
    assert str(blocker / "unet") in line and "file" in line.split("Fix:")[1]
    assert blocker.read_text() == "a file, not a folder"


def test_output_that_is_a_file_where_a_folder_goes_exits_2(manifest, tmp_path, capsys):
    blocker = tmp_path / "unet"
    blocker.write_text("x")
    assert _train_unet_cli(manifest, blocker) == 2
    assert str(blocker) in _one_error(capsys.readouterr().err)


# -------------------------------------------------------------------- temp files and modes

def test_stale_temporary_files_are_removed_on_resume(tmp_path):
    _tiny_loop(tmp_path, n_steps=4)
    stale = [tmp_path / ".last.pt.ab12cd_3.tmp", tmp_path / ".log.csv.zzzzzzzz.tmp",
             tmp_path / ".meta.json.0a1b2c3d.tmp"]
    for p in stale:
        p.write_bytes(b"x" * 100)
    stale_dirs = [tmp_path / ".final.k2j4h5g6", tmp_path / ".final.old"]
    for d in stale_dirs:
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"x")
    keep = [tmp_path / "notes.txt", tmp_path / ".other.ab12cd34.tmp", tmp_path / ".last.pt.tmp",
            tmp_path / ".final.mine"]
    for p in keep:
        p.write_text("mine")
    _tiny_loop(tmp_path, n_steps=6)
    assert not any(p.exists() for p in stale + stale_dirs)
    assert all(p.is_file() for p in keep)
    assert (tmp_path / "final" / "w.pt").is_file()


@pytest.mark.parametrize("umask", [0o002, 0o027])
def test_written_files_and_folders_follow_the_umask(umask, tmp_path):
    old = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        _tiny_loop(tmp_path / "ckpt", n_steps=2)
    finally:
        os.umask(old)

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    files = [tmp_path / "a.txt"] + [tmp_path / "ckpt" / n for n in ("last.pt", "log.csv", "meta.json")]
    assert {p.name: mode(p) for p in files} == {p.name: 0o666 & ~umask for p in files}
    assert mode(tmp_path / "ckpt" / "final") == 0o777 & ~umask
    assert mode(tmp_path / "ckpt" / "final" / "w.pt") == 0o666 & ~umask
