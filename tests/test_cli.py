"""The entry points the rules call: one clear message and exit code 2 on bad input, no output."""

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from ldpm.cli import main


def test_preprocess_of_a_non_hdf5_file_names_it_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "file_brain_AXT1_x.h5"
    bad.write_bytes(b"this is not HDF5")
    out = tmp_path / "out" / "slices.h5"
    assert main(["preprocess", "--input", str(bad), "--output", str(out),
                 "--crop-size", "16", "--drop-last-slices", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and bad.name in err and "Fix:" in err
    assert not out.exists()
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_preprocess_of_nan_kspace_names_it_and_writes_nothing(tmp_path, capsys):
    f = tmp_path / "file_brain_AXT2_nan.h5"
    k = np.ones((5, 2, 32, 16), np.complex64)
    k[1, 0, 3, 3] = np.nan
    with h5py.File(f, "w") as h:
        h.create_dataset("kspace", data=k)
    out = tmp_path / "slices.h5"
    assert main(["preprocess", "--input", str(f), "--output", str(out),
                 "--crop-size", "16", "--drop-last-slices", "3"]) == 2
    assert f.name in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.glob(".*tmp")) == []


def test_unknown_method_is_refused(tmp_path, capsys):
    shard = tmp_path / "shard.h5"
    with h5py.File(shard, "w") as h:
        h.create_dataset("target", data=np.zeros((0, 8, 8), np.float32))
    assert main(["reconstruct", "--method", "magic", "--shard-data", str(shard),
                 "--output", str(tmp_path / "r.h5")]) == 2
    assert "zero_filled" in capsys.readouterr().err


def test_console_script_is_installed():
    exe = Path(sys.executable).parent / "ldpm"
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "preprocess" in proc.stdout


def test_version_is_the_package_version(capsys):
    import tomllib
    from pathlib import Path

    import pytest

    from ldpm.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert capsys.readouterr().out.strip() == f"ldpm {project['project']['version']}"


def test_expected_warnings_are_logged_once_not_swallowed(caplog):
    import logging
    import warnings

    from ldpm.logs import warnings_once

    with caplog.at_level(logging.WARNING, logger="ldpm.logs"):
        for _ in range(3):
            with warnings_once("loading X"):
                warnings.warn("a note from a dependency", DeprecationWarning)
    assert [r.getMessage() for r in caplog.records] == [
        "loading X: DeprecationWarning: a note from a dependency"]
