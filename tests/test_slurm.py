"""The slurm profile on a real SLURM: the tiny DAG through `snakemake --profile <slurm profile>`.

tests/slurm/minicluster.py installs Debian's slurm-wlm, slurmdbd, munge and mariadb-server if
they are missing (root + apt-get; otherwise the test is skipped with the reason), starts munged,
MariaDB, slurmdbd, slurmctld and slurmd on localhost, and stops them afterwards. The one node
advertises what the profile asks for (GPUs as bookkeeping GRES, see minicluster.py), so the
profile's own sbatch options are used unchanged: only the thread counts are capped at 1 for a
2-core machine, and the partition/account/GPU model come from the environment as on a cluster.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import job_stats, SNAKEMAKE, TINY_TWO_METHODS, workflow_rules

sys.path.insert(0, str(Path(__file__).resolve().parent / "slurm"))
from minicluster import ACCOUNT, PARTITION, MiniSlurm, ensure_installed

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "workflow" / "profiles" / "slurm"
VENV_BIN = Path(sys.executable).parent

#: the tiny DAG: every rule kind (data, GPU training, GPU and CPU reconstruction, metrics,
#: report) with one trained method, so the run takes a few minutes on 2 cores
TINY = TINY_TWO_METHODS
GPU_MODEL = "a100"


# --------------------------------------------------------------------------- fast checks
def _parsed_profile(env: dict[str, str]) -> dict:
    """The profile as Snakemake reads it (YTE evaluated) under the given environment."""
    from snakemake.profiles import ProfileConfigFileParser

    saved = dict(os.environ)
    try:
        for k in [k for k in os.environ if k.startswith("LDPM_")]:
            del os.environ[k]
        os.environ.update(env)
        with open(PROFILE / "config.yaml") as f:
            return ProfileConfigFileParser().parse(f)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_profile_names_only_rules_of_the_workflow():
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    named = set(profile["set-resources"]) | set(profile["set-threads"])
    assert named <= workflow_rules(), f"profile names unknown rules: {named - workflow_rules()}"
    for rule, res in profile["set-resources"].items():
        assert not ({"gpu", "gpu_model"} & set(res) and "gres" in res), rule  # both reach sbatch
    assert {"train", "reconstruct"} <= {r for r, res in profile["set-resources"].items()
                                        if res.get("slurm_partition") == "?GPU_PARTITION"}


def test_profile_takes_site_settings_from_the_environment():
    unset = _parsed_profile({})
    assert "slurm_partition=''" in unset["default-resources"]  # '' = not passed to sbatch
    assert "slurm_account=''" in unset["default-resources"]
    assert {"train:gpu=1", "train:gpu_model=''",
            "train:slurm_partition=''"} <= set(unset["set-resources"])
    site = _parsed_profile({"LDPM_SLURM_PARTITION": "cpu", "LDPM_SLURM_GPU_PARTITION": "gpu",
                            "LDPM_SLURM_ACCOUNT": "lab", "LDPM_SLURM_GPU_MODEL": "h100",
                            "LDPM_TRAIN_GPUS": "4"})
    assert {"slurm_partition='cpu'", "slurm_account='lab'"} <= set(site["default-resources"])
    assert {"train:gpu=4", "train:gpu_model='h100'", "train:slurm_partition='gpu'",
            "reconstruct:slurm_partition='gpu'",
            "preprocess:mem_mb=8000"} <= set(site["set-resources"])
    gpu_only = _parsed_profile({"LDPM_SLURM_PARTITION": "cpu"})  # GPU partition falls back
    assert "train:slurm_partition='cpu'" in gpu_only["set-resources"]


# --------------------------------------------------------------------------- real SLURM
@pytest.fixture(scope="module")
def slurm():
    why = ensure_installed(log=lambda msg: print(msg, flush=True))
    if why:
        pytest.skip(f"no SLURM on this machine: {why}")
    # short path: munge's socket path must stay under the 108-byte limit
    root = Path(tempfile.mkdtemp(prefix="ldpm-slurm-", dir="/tmp"))
    cluster = MiniSlurm(root, cpus=16, mem_mb=65536, gpus=4, gpu_type=GPU_MODEL)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def _profile_thread_caps() -> list[str]:
    """--set-threads entries capping every rule the profile gives threads to at 1 thread."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    return [f"{rule}=1" for rule in profile.get("set-threads", {})]


@pytest.mark.slow
def test_tiny_dag_runs_through_real_slurm_with_the_profile(slurm, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    cfg = work / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    env = dict(os.environ, **slurm.env)
    env.update(PATH=f"{VENV_BIN}:{env['PATH']}", LDPM_SLURM_PARTITION=PARTITION,
               LDPM_SLURM_ACCOUNT=ACCOUNT, LDPM_SLURM_GPU_MODEL=GPU_MODEL)
    env.pop("LDPM_SLURM_GPU_PARTITION", None)
    env.pop("LDPM_TRAIN_GPUS", None)
    base = [SNAKEMAKE, "--profile", str(PROFILE), "--snakefile", str(REPO / "Snakefile"),
            "--directory", str(work), "--configfile", str(cfg)]
    plan = subprocess.run([*base, "--dry-run", "all"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=300)
    assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-3000:]
    expected = {r: n for r, n in job_stats(plan.stdout + plan.stderr).items() if r != "all"}
    assert expected.get("train_baseline") == 1 and expected.get("reconstruct") == 2

    proc = subprocess.run(
        [*base, "--set-threads", *_profile_thread_caps(), "--jobs", "4",
         "--slurm-init-seconds-before-status-checks", "2", "--slurm-keep-successful-logs",
         "--latency-wait", "10", "all"],
        cwd=work, env=env, capture_output=True, text=True, timeout=1200)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:] + "\n" + slurm.log_tails()
    for ext in ("csv", "md", "tex"):
        assert (work / "results" / "tables" / f"table1.{ext}").is_file()
    run_id = re.search(r"SLURM run ID: (\S+)", out).group(1)

    # every job went through SLURM, and the accounting database has it
    rows = slurm.cmd("sacct", "-X", "-n", "-P", "--name", run_id, "--starttime", "now-1days",
                     "--format=JobIDRaw,Comment,State,Account,Partition,ReqTRES,AllocTRES")
    jobs = [dict(zip(("id", "comment", "state", "account", "partition", "req", "alloc"),
                     line.split("|"), strict=True)) for line in rows.strip().splitlines()]
    by_rule: dict[str, list[dict]] = {}
    for job in jobs:
        rule = next(r for r in sorted(expected, key=len, reverse=True)
                    if re.fullmatch(rf"rule_{r}(_wildcards_.*)?", job["comment"]))
        by_rule.setdefault(rule, []).append(job)
    assert {r: len(js) for r, js in by_rule.items()} == expected, rows
    assert {j["state"] for j in jobs} == {"COMPLETED"}, rows
    assert {j["account"] for j in jobs} == {ACCOUNT}
    assert {j["partition"] for j in jobs} == {PARTITION}

    # GPU rules asked for GPUs of the model from the environment, CPU rules for none
    def gpus(job: dict) -> int:
        m = re.search(r"gres/gpu=(\d+)", job["alloc"])
        return int(m.group(1)) if m else 0

    assert [gpus(j) for j in by_rule["train_baseline"]] == [1]
    assert all(f"gres/gpu:{GPU_MODEL}=1" in j["alloc"] for j in by_rule["train_baseline"]), \
        by_rule["train_baseline"]
    # the plugin's comment: rule_<rule>_wildcards_<wildcard values joined by "_">
    recon = {j["comment"].removeprefix("rule_reconstruct_wildcards_").rsplit("_", 1)[0]: gpus(j)
             for j in by_rule["reconstruct"]}
    assert recon == {"unet": 1, "zero_filled": 0}
    for rule in ("embedded_subject", "preprocess", "manifest", "test_shard", "reference_features",
                 "evaluate"):
        assert all(gpus(j) == 0 for j in by_rule[rule]), (rule, by_rule[rule])
    # the profile's memory per rule reached sbatch (training: 64000 MB, evaluate: 16000 MB)
    assert all("mem=62.50G" in j["req"] for j in by_rule["train_baseline"]), by_rule["train_baseline"]
    assert all("mem=16000M" in j["req"] for j in by_rule["evaluate"]), by_rule["evaluate"]
