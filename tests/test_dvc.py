"""DVC over the Snakemake pipeline: repro, push, a fresh clone's pull, tables regenerated without
training; and reproducibility: a second run with the same seed gives the same bytes.

The slow tests share one `dvc repro` of the tiny config in a temporary git repository made
from this working tree, with a local DVC remote beside it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ldpm.config import deep_merge
from conftest import job_stats, SNAKEMAKE, TINY_TWO_METHODS, workflow_rules

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
DVC = shutil.which("dvc", path=str(VENV_BIN)) or "dvc"
LOCAL = ["--profile", "workflow/profiles/local"]

#: tiny config (merged into the clone's config/config.yaml): one trained method, 2 steps
TINY = TINY_TWO_METHODS
TABLE_EXTS = (".md", ".csv", ".tex")
#: the report's tables and figures of wall-clock costs (from the jobs' benchmark files)
CLOCKED_REPORT = {"cost", "quality_time"}
NOT_SHARED = {"logs", "benchmarks", ".gitignore"}  # under results/: what DVC does not track (clocked or per-machine)


def run(cmd: list[str], cwd: Path, timeout: float = 900, check: bool = True,
        stdout_only: bool = False) -> str:
    """The command's stdout and stderr (``stdout_only``: its stdout, e.g. JSON)."""
    env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ['PATH']}", DVC_NO_ANALYTICS="1")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    if check:
        assert proc.returncode == 0, f"{' '.join(cmd)} in {cwd} -> {proc.returncode}\n{out[-6000:]}"
    return proc.stdout if stdout_only else out


def find_key(tree, key: str):
    """The value under ``key`` anywhere in a nested JSON object (DVC nests per revision)."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        for v in tree.values():
            found = find_key(v, key)
            if found is not None:
                return found
    return None


def git(*args: str, cwd: Path) -> str:
    return run(["git", "-c", "user.name=ldpm-test", "-c", "user.email=test@ldpm.invalid",
                "-c", "init.defaultBranch=main", *args], cwd)


def outs_of_dvc_yaml() -> dict[str, list[str]]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: [next(iter(o)) if isinstance(o, dict) else o for o in s["outs"]]
            for name, s in stages.items()}


# --------------------------------------------------------------------------- fast checks
def test_dvc_yaml_names_existing_rules_and_persists_every_out():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    rules = workflow_rules()
    for name, stage in stages.items():
        m = re.search(r"--omit-from ([\w ]+)", stage["cmd"])
        omitted = set(m.group(1).split()) if m else set()
        assert omitted <= rules, f"stage {name} omits unknown rules {omitted - rules}"
        for out in stage["outs"]:
            assert isinstance(out, dict) and next(iter(out.values())).get("persist") is True, \
                f"stage {name}: out {out} must be persist: true (Snakemake updates it)"
    assert "results/models/*/last.pt" in (REPO / ".dvcignore").read_text()
    for name, stage in stages.items():  # a source dependency that moved stops `dvc repro`
        missing = [d for d in stage["deps"] if not d.startswith("results/") and not (REPO / d).exists()]
        assert not missing, f"stage {name} depends on paths that do not exist: {missing}"


def test_dvc_params_metrics_and_plots_name_the_configs_keys_methods_and_stages():
    """Each stage's params are config keys; `metrics:` is every default method's summary and
    `plots:` every default training stage's log (the lists follow config/config.yaml)."""
    from ldpm.methods import method_stages, stage_dependencies

    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for name, stage in dvc["stages"].items():
        keys = [k for p in stage["params"] for k in p["config/config.yaml"]]
        assert keys and set(keys) <= set(cfg), (name, set(keys) - set(cfg))
        assert "config/config.yaml" not in stage["deps"], name  # its keys are params
    report_keys = {k for p in dvc["stages"]["report"]["params"] for k in p["config/config.yaml"]}
    assert report_keys == set(cfg), "provenance.json records every key"
    assert dvc["metrics"] == [f"results/metrics/{m}/summary.json" for m in cfg["methods"]]
    stages = {s for m in cfg["methods"] for s in method_stages(m, False)}
    stages |= {d for s in stages for d in stage_dependencies(s, False)}
    assert {next(iter(p)) for p in dvc["plots"]} == {f"results/models/{s}/log.csv" for s in stages}


#: the rules whose outputs each DVC stage owns, in pipeline order (every rule has one owner)
STAGE_RULES = {
    "data": {"embedded_subject", "preprocess", "manifest", "test_shard",
             "embedded_ood", "preprocess_ood", "ood_manifest", "ood_shard"},
    "train": {"train", "train_baseline", "train_controlnet", "diffcode_train"},
    "recon": {"reconstruct", "reconstruct_ood", "vae_recon"},
    "metrics": {"reference_features", "evaluate", "evaluate_ood", "evaluate_vae", "diffcode_evaluate"},
    "report": {"report", "lora_table", "diffcode_report", "provenance", "all"},
}
#: tuning on the val split (docs/tuning.md): not a shared artefact, so no DVC stage owns it
TUNING_RULES = {"val", "val_score"}


def copy_working_tree(dest: Path) -> Path:
    """The tracked and untracked-but-not-ignored files of this working tree, copied to dest."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout
    for rel in filter(None, listed.split("\0")):
        s, d = REPO / rel, dest / rel
        if s.is_symlink() or s.is_file():
            d.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(s, d, follow_symlinks=False)
    return dest


def test_each_dvc_stage_runs_only_its_own_and_upstream_rules(tmp_path):
    """With the default config and both studies on (DiffCode, LoRA), each stage's command,
    dry-run from nothing, plans its own rules and those of earlier stages, never a later stage's."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(stages) == list(STAGE_RULES)
    listed = {line.split()[0] for line in run([SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"),
                                               "--directory", str(tmp_path), "--list-rules"],
                                              tmp_path).splitlines()
              if line.strip() and not line.startswith("host:")}
    owned = set().union(*STAGE_RULES.values())
    assert listed - TUNING_RULES <= owned, f"rules no DVC stage owns: {listed - owned - TUNING_RULES}"
    src = copy_working_tree(tmp_path / "tree")
    cfg_path = src / "config" / "config.yaml"
    text = cfg_path.read_text()
    for study in ("diffcode", "lora"):
        text = re.sub(rf"^{study}:\n  enabled: false", f"{study}:\n  enabled: true", text, flags=re.M)
        assert f"{study}:\n  enabled: true" in text
    cfg_path.write_text(text)
    allowed: set[str] = set()
    for name, stage in stages.items():
        allowed |= STAGE_RULES[name]
        cmd = stage["cmd"].split("&&")[0].split()
        planned = set(job_stats(run([*cmd, "-n", "--quiet", "rules"], src)))
        assert planned <= allowed, f"stage {name} would run {planned - allowed} (a later stage's)"
        assert STAGE_RULES[name] - {"all"} <= planned, f"stage {name} misses {STAGE_RULES[name] - planned}"


# --------------------------------------------------------------------------- the round trip
@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    """A git repo of this working tree with the tiny config, `dvc repro`-ed and pushed."""
    root = tmp_path_factory.mktemp("dvc")
    src, remote = root / "origin", root / "remote"
    copy_working_tree(src)
    cfg = src / "config" / "config.yaml"
    cfg.write_text(yaml.safe_dump(deep_merge(yaml.safe_load(cfg.read_text()), TINY)))
    git("init", "-q", cwd=src)
    run([DVC, "remote", "add", "-d", "store", str(remote)], src)
    git("add", "-A", cwd=src)
    git("commit", "-q", "-m", "tiny", cwd=src)

    repro = run([DVC, "repro"], src, timeout=1500)
    assert "Running stage 'train'" in repro, repro[-3000:]
    again = run([DVC, "repro"], src)  # nothing changed: no stage runs again
    assert "Running stage" not in again, again[-3000:]
    assert "up to date" in run([DVC, "status"], src)
    run([DVC, "push"], src)
    git("add", "-A", cwd=src)
    git("commit", "-q", "-m", "dvc.lock", cwd=src)
    return src


@pytest.mark.slow
def test_dvc_tracks_every_artefact_but_logs(origin):
    tracked = {o for outs in outs_of_dvc_yaml().values() for o in outs}
    produced = {f"results/{p.name}" for p in (origin / "results").iterdir()
                if p.name not in NOT_SHARED}
    assert produced <= tracked, f"not shared through DVC: {produced - tracked}"
    assert (origin / "results" / "models" / "unet" / "last.pt").exists()
    lock = yaml.safe_load((origin / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(outs_of_dvc_yaml())


@pytest.mark.slow
def test_fresh_clone_pulls_and_regenerates_identical_tables_without_training(origin, tmp_path):
    clone = tmp_path / "clone"
    git("clone", "-q", str(origin), str(clone), cwd=tmp_path)
    # a reviewer's pull: data, checkpoints, reconstructions, metrics (not the tables)
    run([DVC, "pull", "data", "train", "recon", "metrics"], clone)
    assert (clone / "results" / "models" / "unet" / "final" / "model.safetensors").is_file()
    assert not (clone / "results" / "models" / "unet" / "last.pt").exists()  # .dvcignore
    assert not (clone / "results" / "tables").exists()
    # pulled files carry the pull's mtimes in no particular order; --touch marks them up to
    # date in DAG order, so Snakemake's mtime trigger does not ask to retrain
    run([SNAKEMAKE, *LOCAL, "--touch", "all"], clone)
    plan = job_stats(run([SNAKEMAKE, *LOCAL, "--dry-run", "all"], clone))
    assert plan and set(plan) <= {"all", "report", "provenance"}, plan
    out = run([SNAKEMAKE, *LOCAL, "all"], clone)
    assert set(job_stats(out)) == set(plan), out[-3000:]
    assert not re.search(r"^\s*rule (train|reconstruct|evaluate\w*):", out, flags=re.M)
    tables = sorted(p for p in (origin / "results" / "tables").iterdir() if p.suffix in TABLE_EXTS)
    assert tables
    for table in tables:
        regenerated = clone / "results" / "tables" / table.name
        assert regenerated.read_bytes() == table.read_bytes(), table.name
    # the pulled artefacts were used as they are
    assert "up to date" in run([DVC, "status", "data", "train", "recon", "metrics"], clone)
    # DVC's own views of the run: the methods' metrics and the training curves
    metrics = json.loads(run([DVC, "metrics", "show", "--json"], clone, stdout_only=True))
    unet = json.loads((clone / "results" / "metrics" / "unet" / "summary.json").read_text())
    shown = find_key(metrics, "results/metrics/unet/summary.json")
    assert shown["data"]["metrics"]["psnr"]["mean"] == pytest.approx(unet["metrics"]["psnr"]["mean"])
    plots = run([DVC, "plots", "show", "--json"], clone)
    assert "results/models/unet/log.csv" in plots
    # a config change names the stages that read the key, and only those
    cfg = clone / "config" / "config.yaml"
    cfg.write_text(cfg.read_text().replace("kid_subset_size: 4", "kid_subset_size: 3"))
    status = run([DVC, "status"], clone)
    assert "metrics:" in status and "report:" in status
    assert not re.search(r"^(data|train|recon):", status, flags=re.M), status


@pytest.mark.slow
def test_second_run_with_the_same_seed_gives_identical_checkpoints_and_tables(origin, tmp_path):
    second = tmp_path / "second"
    git("clone", "-q", str(origin), str(second), cwd=tmp_path)
    # the commit origin's run was made at (before dvc.lock was committed): provenance.json and
    # report.md record the checkout's commit
    git("checkout", "-q", "HEAD~1", cwd=second)
    run([SNAKEMAKE, *LOCAL, "all"], second, timeout=1500)  # from scratch: nothing pulled
    ckpts = sorted((origin / "results" / "models").glob("*/final/*"))
    assert any(p.suffix == ".safetensors" for p in ckpts), ckpts
    for ckpt in ckpts:
        again = second / ckpt.relative_to(origin)
        assert again.read_bytes() == ckpt.read_bytes(), ckpt.relative_to(origin)
    for table in sorted((origin / "results" / "tables").iterdir()):
        if table.suffix in TABLE_EXTS and table.stem not in CLOCKED_REPORT:
            again = second / table.relative_to(origin)
            assert again.read_bytes() == table.read_bytes(), table.name
    # everything else is byte-identical too (data, reconstructions, metrics, PNGs, report.md,
    # provenance.json) except files that carry a clock: wall-clock seconds in meta.json (and
    # the resume state), PDF creation dates, the notebook's execution times, sampling seconds
    differ = {str(p.relative_to(origin)) for p in sorted((origin / "results").rglob("*"))
              if p.is_file() and not {"logs", "benchmarks"} & set(p.parts)
              and (second / p.relative_to(origin)).read_bytes() != p.read_bytes()}
    clocked = {d for d in differ if d.endswith((".pdf", ".ipynb", "/meta.json", "/last.pt", ".timing.json"))
               or Path(d).stem in CLOCKED_REPORT}
    assert differ == clocked, sorted(differ - clocked)
