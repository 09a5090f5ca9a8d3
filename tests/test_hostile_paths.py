"""Paths and config strings with spaces, quotes and command substitutions reach every rule's
shell command as plain arguments: nothing in them is run by the shell, nothing is split."""

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import SNAKEMAKE, write_fastmri_file

REPO = Path(__file__).resolve().parents[1]

#: a space, single and double quotes, and two command substitutions that would create PWNED
HOSTILE = "sp ace 'sq' \"dq\" $(touch PWNED) `touch PWNED`"
#: how HOSTILE reads inside a JSON string (its double quotes escaped)
HOSTILE_JSON = json.dumps(HOSTILE)[1:-1]

#: the programs the rules' shell commands call; stubs record their arguments instead
PROGRAMS = ("python", "papermill")  # the rules call `python -m ldpm.cli`, no installed script
STUB = '#!/bin/bash\n{ printf "%s\\0" "$(basename "$0")"; for a in "$@"; do printf "%s\\0" "$a"; done; } > "$STUB_OUT"\n'


def snakemake(snakefile: Path, workdir: Path, config: dict, *args: str, timeout: int = 600):
    cfg = workdir / "hostile.yaml"
    cfg.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [SNAKEMAKE, "--snakefile", str(snakefile), "--directory", str(workdir),
         "--configfile", str(cfg), "--cores", "2", *args],
        capture_output=True, text=True, timeout=timeout,
        env=dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}"))


def fastmri_folder(root: Path, n: int = 3) -> list[Path]:
    """n tiny fastMRI-format multicoil files (one subject each), one with a hostile name."""
    root.mkdir(parents=True)
    names = [f"file_brain_AXT2_200_600200{i}.h5" for i in range(n - 1)]
    names.append(f"file_brain_AXT2_200_6002009 {HOSTILE}.h5")
    return [write_fastmri_file(root / name, n_slices=3, patient_id=f"p{i:03d}", seed=i)
            for i, name in enumerate(names)]


def pwned(tmp_path: Path) -> list[Path]:
    """Every file named PWNED under tmp_path, the repository and the current folder."""
    found = [*tmp_path.rglob("PWNED"), *REPO.rglob("PWNED")]
    return found + ([Path.cwd() / "PWNED"] if (Path.cwd() / "PWNED").exists() else [])


def hostile_config(tmp_path: Path, source: str) -> tuple[dict, dict]:
    """A small config whose path values hold HOSTILE; (config, the hostile values by key). The
    files and folders it names exist (validation checks that), as placeholders: no job here
    loads them."""
    data, weights = tmp_path / f"data {HOSTILE}", tmp_path / f"weights {HOSTILE}"
    weights.mkdir()
    values = {
        "vgg19_path": str(weights / f"vgg19 {HOSTILE}.pth"),
        "vgg16_path": str(weights / f"vgg16 {HOSTILE}.pth"),
        "lpips_backbone": str(weights / f"alexnet {HOSTILE}.pth"),
        "inception_weights": str(weights / f"inception {HOSTILE}.pt"),
    }
    for path in values.values():
        Path(path).write_bytes(b"placeholder")
    config = {
        "data": {"crop_size": 16, "drop_last_slices": 0,
                 "split_fractions": {"train": 0.5, "val": 0.0, "test": 0.5}},
        "embedded": {"n_subjects": 3, "slices_per_volume": 2, "contrasts": ["T1"]},
        "inference": {"n_shards": 1},
        "pretrained": {"vgg19_path": values["vgg19_path"], "vgg16_path": values["vgg16_path"]},
        "metrics": {"lpips_backbone": values["lpips_backbone"],
                    "inception_weights": values["inception_weights"], "kid_subset_size": 4},
    }
    if source == "fastmri":
        fastmri_folder(data)
        sd = weights / f"sd {HOSTILE}"
        for part in ("vae/config.json", "unet/config.json", "text_encoder/config.json"):
            (sd / part).parent.mkdir(parents=True)
            (sd / part).write_text("{}")
        (sd / "tokenizer").mkdir()
        values["sd_path"] = str(sd)
        values["fastmri_root"] = str(data)
        config["data"].update(source="fastmri", fastmri_root=values["fastmri_root"])
        config["pretrained"]["sd_path"] = values["sd_path"]
    return config, values


def printed_commands(out: str) -> list[tuple[str, str]]:
    """(rule, shell command) of every job a `snakemake -n -p` run printed."""
    jobs, rule = [], None
    for line in out.splitlines():
        if line.startswith(("rule ", "localrule ")) and line.endswith(":"):
            rule = line.split()[1].rstrip(":")
        elif line.startswith("Shell command: ") and line != "Shell command: None":
            jobs.append((rule, line[len("Shell command: "):]))
    return jobs


def run_with_stubs(command: str, cwd: Path, stubs: Path, record: Path) -> list[str]:
    """Run one printed shell command with bash, as Snakemake does, its programs stubbed; the
    argv the program got."""
    words = shlex.split(command)
    if ">" in words:  # the log's folder, which Snakemake would create
        (cwd / words[words.index(">") + 1]).parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["bash", "-c", f"set -euo pipefail; {command}"], cwd=cwd,
                          env=dict(os.environ, PATH=f"{stubs}:{os.environ['PATH']}",
                                   STUB_OUT=str(record)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, (command, proc.stderr)
    return [w.decode() for w in record.read_bytes().split(b"\0")[:-1]]


def option(argv: list[str], flag: str) -> str:
    assert flag in argv, (flag, argv)
    return argv[argv.index(flag) + 1]


@pytest.mark.parametrize("source", ["fastmri", "embedded"])
def test_every_rule_passes_hostile_values_as_single_arguments(tmp_path, source):
    """Every job of the whole DAG (and the val targets), its shell command as Snakemake prints
    it run by bash with stub programs, from a workflow folder and a working directory whose
    paths hold HOSTILE: each hostile value arrives intact as (part of) one argument and
    nothing is executed."""
    wf = tmp_path / f"wf {HOSTILE}"
    wf.mkdir()
    for name in ("Snakefile", "environment.yml"):
        shutil.copy(REPO / name, wf / name)
    for name in ("workflow", "config"):
        shutil.copytree(REPO / name, wf / name)
    work = tmp_path / f"run {HOSTILE}"
    work.mkdir()
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for program in PROGRAMS:
        (stubs / program).write_text(STUB)
        (stubs / program).chmod(0o755)
    config, values = hostile_config(tmp_path, source)

    proc = snakemake(wf / "Snakefile", work, config, "-n", "-p", "all", "val")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = printed_commands(proc.stdout + proc.stderr)
    listed = snakemake(wf / "Snakefile", work, config, "--list-rules")
    assert listed.returncode == 0, listed.stderr[-3000:]
    rules = {line.split()[0] for line in listed.stdout.splitlines() if line.strip()} - {"all", "val"}
    assert {rule for rule, _ in jobs} == rules

    argvs: dict[str, list[list[str]]] = {}
    for i, (rule, command) in enumerate(jobs):
        argv = run_with_stubs(command, work, stubs, tmp_path / f"argv{i}")
        assert argv and argv[0] in PROGRAMS, (rule, command)
        for arg in argv:
            if "PWNED" in arg:
                assert HOSTILE in arg or HOSTILE_JSON in arg, (rule, arg)
        argvs.setdefault(rule, []).append(argv)
        if rule in ("evaluate", "evaluate_vae"):
            assert option(argv, "--lpips-backbone") == values["lpips_backbone"]
            assert option(argv, "--inception-weights") == values["inception_weights"]
        if rule == "train":
            pretrained = json.loads(option(argv, "--pretrained"))
            assert pretrained["vgg19_path"] == values["vgg19_path"]
            assert pretrained["vgg16_path"] == values["vgg16_path"]
        if rule == "provenance":
            assert json.loads(option(argv, "--config"))["metrics"]["lpips_backbone"] == values["lpips_backbone"]
        if rule == "preprocess" and source == "fastmri":  # embedded: a file a job writes
            assert Path(option(argv, "--input")).is_file()
        if rule == "vae_recon":
            assert option(argv, "--sd-path") == values.get("sd_path", "")
        if rule in ("report", "lora_table", "diffcode_report"):
            assert Path(argv[argv.index("python3") + 1]).is_file()  # the notebook, in wf
    if source == "fastmri":
        # the hostile file name reaches its preprocess job's output and the manifest intact
        stem = f"file_brain_AXT2_200_6002009 {HOSTILE}"
        assert f"results/data/slices/{stem}.h5" in [option(a, "--output") for a in argvs["preprocess"]]
        assert f"results/data/slices/{stem}.h5" in argvs["manifest"][0]
    assert pwned(tmp_path) == []


def test_data_rules_and_provenance_run_on_hostile_paths(tmp_path):
    """A real run: fastMRI files in a folder (one file too) named with HOSTILE, a working
    directory named with it, and a hostile string in the config that provenance's JSON carries:
    preprocess, manifest, test_shard and provenance succeed and nothing is executed."""
    config, values = hostile_config(tmp_path, "fastmri")
    work = tmp_path / f"run {HOSTILE}"
    work.mkdir()
    proc = snakemake(REPO / "Snakefile", work, config, "results/provenance.json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    res = work / "results"
    stem = f"file_brain_AXT2_200_6002009 {HOSTILE}"
    assert (res / "data" / "slices" / f"{stem}.h5").is_file()
    assert (res / "data" / "test" / "shard0.h5").is_file()
    assert stem in set(pd.read_csv(res / "data" / "manifest.csv")["volume"])
    prov = json.loads((res / "provenance.json").read_text())
    cfg = prov["config"]
    assert cfg["pretrained"]["vgg19_path"] == values["vgg19_path"]
    assert cfg["data"]["fastmri_root"] == values["fastmri_root"]
    assert cfg["metrics"]["lpips_backbone"] == values["lpips_backbone"]
    assert pwned(tmp_path) == []
