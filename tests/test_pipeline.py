"""The whole DAG, end to end, on a tiny embedded config (the README's run, made small)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import SNAKEMAKE

REPO = Path(__file__).resolve().parents[1]

TINY = {
    # 6 subjects: each field-strength group of 3 gets a train, a val and a test subject
    "embedded": {"n_subjects": 6, "slices_per_volume": 2, "contrasts": ["T1", "T2"]},
    "data": {"crop_size": 64, "split_fractions": {"train": 0.34, "val": 0.33, "test": 0.33}},
    "metrics": {"kid_subset_size": 4},
    # every stage trains for real, for a few steps: this tests the wiring, not the quality
    "train": {"stages": {s: {"n_steps": 3, "ckpt_every": 2} for s in (
        "sketcher", "vae_natural", "vae", "denoiser", "controlnet", "unet", "varnet", "swinmr", "score_mri",
        "lora_r4", "lora_r16", "lora_t1", "lora_t2")}},
    "inference": {"n_shards": 2, "ldpm": {"n_steps": 3, "n_samples": 2}, "score_mri": {"n_steps": 3, "n_samples": 2}},
    # DiffCode: every kind of stage (bank, single bank, diffusion/direct retrieval, restore with
    # and without a prior, an all-in-one baseline), 2 steps each
    "diffcode": {"enabled": True, "variants": ["v1", "v3", "single"], "baselines": ["swinir"],
                 "overrides": {"train": {"patch": 32, "batch_size": 2, "ckpt_every": 2},
                               "steps": {"bank": 2, "retrieval": 2, "restore": 2, "unet": 2, "swinir": 2}}},
    "lora": {"enabled": True, "step_counts": [2], "methods": ["ldpm_lora_r4", "ldpm_lora_r16", "ldpm_lora_t1",
                                             "ldpm_lora_t2", "ldpm_lora_mix"]},
}


def run_snakemake(workdir: Path, *args: str, config: dict | None = None) -> subprocess.CompletedProcess:
    cfg = workdir / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(config if config is not None else TINY))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    return subprocess.run(
        [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
         "--configfile", str(cfg), "--cores", "2", *args],
        capture_output=True, text=True, env=env, timeout=1200)


@pytest.mark.slow
def test_whole_dag_on_tiny_config(tmp_path):
    # a working directory whose path holds a space, quotes and a command substitution: every
    # job's shell command must pass it (and the paths under it) on untouched and unexecuted
    workdir = tmp_path / "run dir 'q' \"dq\" $(touch PWNED)"
    workdir.mkdir()
    proc = run_snakemake(workdir, "all")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    res = workdir / "results"
    for ext in ("csv", "md", "tex"):
        assert (res / "tables" / f"table1.{ext}").is_file()
    assert (res / "figures" / "fig2_examples.png").stat().st_size > 1000
    assert (res / "notebooks" / "report.ipynb").is_file()
    for n in (1, 2, 3):
        assert (res / "tables" / f"table{n}.md").is_file()
    assert (res / "report.md").is_file() and (res / "figures" / "fig3_vae.png").is_file()
    assert all((res / "tables" / f"diffcode_table{n}.md").is_file() for n in (1, 2))
    assert (res / "tables" / "lora.md").is_file() and (res / "notebooks" / "lora.ipynb").is_file()
    # table values are exactly the metrics the evaluate step wrote
    table = pd.read_csv(res / "tables" / "table1.csv").set_index("method")
    for method in table.index:
        summary = json.loads((res / "metrics" / method / "summary.json").read_text())
        for key in ("psnr", "ssim", "nmse"):
            assert table.loc[method, key] == pytest.approx(summary["metrics"][key]["value"], rel=1e-12)
    # an n/a metric carries its reason into the table
    md = (res / "tables" / "table1.md").read_text()
    if pd.isna(table.loc["zero_filled", "lpips"]):
        assert "n/a" in md and "AlexNet" in md
    prov = json.loads((res / "provenance.json").read_text())
    assert prov["data_sha256"] and prov["git_commit"]
    assert (res / "figures" / "training_curves.png").stat().st_size > 1000
    assert "sketcher_only" in pd.read_csv(res / "tables" / "table2.csv")["method"].tolist()
    # Table III's OOD column: the embedded default's dipy scans, scored apart and never trained on
    t3 = pd.read_csv(res / "tables" / "table3.csv").set_index("method")
    ood_manifest = pd.read_csv(res / "data" / "ood" / "manifest.csv")
    assert set(ood_manifest["split"]) == {"test"}
    assert not set(ood_manifest["volume"]) & set(pd.read_csv(res / "data" / "manifest.csv")["volume"])
    for method in t3.index:
        ood = pd.read_csv(res / "metrics" / method / "ood" / "per_volume.csv")
        assert set(ood["volume"]) == set(ood_manifest["volume"])
        assert t3.loc[method, "ood"] == pytest.approx(ood["psnr"].mean(), rel=1e-12)
        summary = json.loads((res / "metrics" / method / "ood" / "summary.json").read_text())
        assert summary["metrics"]["rfid"] == {"value": None, "reason": "not computed for this set (pixel metrics only)"}
    assert "OOD (brain B0EPI, T1COR)" in (res / "tables" / "table3.md").read_text()
    # its diagnostics read the written reconstructions: the raw PSNR is Table III's per volume,
    # and the anatomy and background errors add up to the whole one
    check = subprocess.run([sys.executable, str(REPO / "benchmarks" / "ood_check.py"), "--run", str(res),
                            "--out", str(workdir / "ood_check.json")], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr[-3000:]
    diag = json.loads((workdir / "ood_check.json").read_text())
    assert set(diag) == set(t3.index)
    for method, d in diag.items():
        per_volume = pd.read_csv(res / "metrics" / method / "ood" / "per_volume.csv").set_index("volume")
        for volume, psnr in d["raw"].items():
            assert psnr == pytest.approx(per_volume.loc[volume, "psnr"], abs=0.02)
            parts = 10 ** (-d["anatomy"][volume] / 10) + 10 ** (-d["background"][volume] / 10)
            assert 10 ** (-psnr / 10) == pytest.approx(parts, rel=0.01)
    # tuning reads the val split through the same methods, never the test split
    val = run_snakemake(workdir, "results/val/ldpm/summary.json", "results/val/zero_filled/summary.json")
    assert val.returncode == 0, val.stdout[-3000:] + val.stderr[-3000:]
    summary = json.loads((res / "val" / "ldpm" / "summary.json").read_text())
    assert summary["split"] == "val" and summary["n_volumes"] >= 1
    test_volumes = set(pd.read_csv(res / "metrics" / "ldpm" / "per_volume.csv")["volume"])
    import h5py
    with h5py.File(res / "val" / "ldpm" / "shard.h5") as f:
        assert not test_volumes & {v.decode() for v in f["volume"][()]}
    # nothing left to do: a second run is a no-op
    again = run_snakemake(workdir, "all", "-n")
    assert "Nothing to be done" in again.stdout + again.stderr
    # the workflow measured every job, and the report's cost table is those files' numbers
    bench = res / "benchmarks"
    for kind in ("preprocess", "train", "reconstruct", "evaluate"):
        assert list((bench / kind).glob("*.tsv")), kind
    costs = pd.read_csv(res / "tables" / "cost.csv")
    ldpm_row = costs[(costs["kind"] == "reconstruct") & (costs["name"] == "ldpm")].iloc[0]
    shards = [pd.read_csv(f, sep="\t")["s"].iloc[-1] for f in sorted((bench / "reconstruct").glob("ldpm_[0-9]*.tsv"))]
    assert ldpm_row["jobs"] == 2 and ldpm_row["seconds"] == pytest.approx(sum(shards))
    for fig in ("per_volume", "subsets", "cost", "quality_time"):
        assert (res / "figures" / f"{fig}.png").stat().st_size > 1000, fig
        assert (res / "figures" / f"{fig}.pdf").is_file(), fig
    # Snakemake's HTML report: every flagged table, figure and notebook, by category and caption
    html = run_snakemake(workdir, "--report", "results/report.html", "all")
    assert html.returncode == 0, html.stdout[-3000:] + html.stderr[-3000:]
    page = (res / "report.html").read_text()
    for name in ("table1.csv", "table2.csv", "table3.csv", "cost.csv", "fig3_vae.csv",
                 "lora.csv", "diffcode_table1.csv", "diffcode_table2.csv", "fig2_examples.png",
                 "fig3_vae.png", "training_curves.png", "per_volume.png", "subsets.png",
                 "cost.png", "quality_time.png", "report.ipynb", "lora.ipynb", "diffcode.ipynb",
                 "Table I", "Table III", "Cost per job", "Training curves", "DiffCode", "LoRA",
                 "Tang et al., LDPM"):
        assert name in page, name
    assert "Undefined substitution" not in html.stderr
    assert [*tmp_path.rglob("PWNED"), *REPO.rglob("PWNED")] == []


@pytest.mark.slow
def test_dag_on_a_stable_diffusion_folder(tmp_path):
    """``pretrained.sd_path`` end to end, on a folder in SD 2-1-base's layout with tiny random
    weights: no denoiser or natural-image VAE is trained; MR-VAE starts from ``vae/``; "w/o
    MR-VAE" decodes with ``vae/``; the empty-prompt context is the text encoder's output for "";
    the control branch starts as a copy of ``unet/``'s encoder. A step at lr 1e-5 moves each
    weight by about 1e-5, while a fresh initialisation would be another draw (the control
    branch's encoder moves from its second step, once its zero convolutions are not zero)."""
    import torch
    from conftest import write_tiny_sd
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import load_file
    from transformers import CLIPTextModel, CLIPTokenizer

    from ldpm.checkpoints import load_controlnet, load_vae
    from ldpm.methods.ldpm import load_ldpm

    sd = write_tiny_sd(tmp_path / "sd 2-1 'base'")
    work = tmp_path / "run"
    work.mkdir()
    config = {
        "embedded": {"n_subjects": 4, "slices_per_volume": 2, "contrasts": ["T1"], "ood": False},
        "data": {"crop_size": 64, "split_fractions": {"train": 0.5, "val": 0.0, "test": 0.5}},
        "inference": {"n_shards": 1, "ldpm": {"n_steps": 2}},
        "metrics": {"kid_subset_size": 4},
        "methods": ["zero_filled", "ldpm", "ldpm_wo_mrvae"],
        "pretrained": {"sd_path": str(sd)},
        "train": {"stages": {"sketcher": {"n_steps": 2}, "vae": {"n_steps": 1, "lr": 1e-5},
                             "controlnet": {"n_steps": 2, "lr": 1e-5}}},
        "diffcode": {"enabled": False}, "lora": {"enabled": False},
    }
    proc = run_snakemake(work, "all", config=config)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = proc.stdout + proc.stderr
    models = work / "results" / "models"
    assert "results/models/denoiser" not in out and "vae_natural" not in out
    assert sorted(p.name for p in models.iterdir()) == ["controlnet", "sketcher", "vae"]

    def close(a: dict, b: dict, atol: float = 1e-4) -> bool:
        return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol) for k in a)

    sd_vae = AutoencoderKL.from_pretrained(sd, subfolder="vae").state_dict()
    mr_vae = load_vae(models / "vae").state_dict()
    assert close(mr_vae, sd_vae) and not close(mr_vae, sd_vae, atol=0.0)
    assert json.loads((models / "vae" / "meta.json").read_text())["sd_path"] == str(sd)
    sketcher, untuned, _ = load_ldpm({s: models / s for s in ("sketcher", "vae", "controlnet")},
                                     "untuned", str(sd))
    assert close(untuned.state_dict(), sd_vae, atol=0.0)  # w/o MR-VAE: SD's VAE itself
    tok = CLIPTokenizer.from_pretrained(sd, subfolder="tokenizer")
    ids = tok([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = CLIPTextModel.from_pretrained(sd, subfolder="text_encoder")(ids)[0]
    null = load_file(models / "controlnet" / "final" / "null_text_embedding.safetensors")["null"]
    assert null.shape == (1, 77, 16) and torch.allclose(null, expected, atol=1e-6)
    unet = UNet2DConditionModel.from_pretrained(sd, subfolder="unet")
    branch = load_controlnet(models / "controlnet", unet).controlnet
    encoder = {k: v for k, v in unet.state_dict().items() if k.startswith(("down_blocks.", "mid_block.", "conv_in."))}
    copied = {k: v for k, v in branch.state_dict().items() if k in encoder}
    assert len(copied) == len(encoder) and close(copied, encoder) and not close(copied, encoder, atol=0.0)
    import h5py
    with h5py.File(work / "results" / "recon" / "ldpm" / "shard0.h5") as a, \
            h5py.File(work / "results" / "recon" / "ldpm_wo_mrvae" / "shard0.h5") as b:
        assert not np.array_equal(a["recon"][()], b["recon"][()])  # decoded by another VAE


def test_ood_set_comes_from_data_ood_root_or_the_embedded_scans_or_is_off(tmp_path):
    """The OOD set is preprocessed, sharded, reconstructed and scored by each Table I method:
    from data.ood_root when set (no embedded OOD build), from dipy's scans for the embedded data,
    or not at all with embedded.ood false."""
    from conftest import TINY_TWO_METHODS, job_stats, write_fastmri_file

    knee = tmp_path / "knee multicoil_val"
    knee.mkdir()
    for name in ("file1000002.h5", "file1000005.h5"):
        write_fastmri_file(knee / name, acquisition="CORPD_FBK", shape=(128, 64))
    plans = {}
    for label, extra in (("root", {"data": {**TINY_TWO_METHODS["data"], "ood_root": str(knee)}}),
                         ("embedded", {}), ("off", {"embedded": {**TINY_TWO_METHODS["embedded"], "ood": False}})):
        work = tmp_path / label
        work.mkdir()
        proc = run_snakemake(work, "-n", "all", config={**TINY_TWO_METHODS, **extra})
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        plans[label] = job_stats(proc.stdout + proc.stderr)
    assert plans["root"]["preprocess_ood"] == 2 and "embedded_ood" not in plans["root"]
    assert plans["embedded"]["embedded_ood"] == 1 and plans["embedded"]["preprocess_ood"] == 2
    for label in ("root", "embedded"):
        assert plans[label]["ood_manifest"] == plans[label]["ood_shard"] == 1
        assert plans[label]["reconstruct_ood"] == plans[label]["evaluate_ood"] == 2  # zero_filled, unet
    assert not {r for r in plans["off"] if "ood" in r}
    # the training data's manifest never reads an OOD store
    assert plans["root"]["preprocess"] == plans["off"]["preprocess"]


def test_bad_config_key_stops_the_dag_with_one_clear_message(tmp_path):
    proc = run_snakemake(tmp_path, "-n", "all", config={"data": {"sourse": "embedded"}})
    assert proc.returncode != 0
    assert "sourse" in proc.stderr + proc.stdout
    assert not (tmp_path / "results").exists()


def test_slurm_profile_dry_runs(tmp_path):
    """The SLURM profile plans the default DAG, in a working folder of its own (the
    repository's .snakemake/ and results/ stay untouched)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    proc = subprocess.run([SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory",
                           str(tmp_path), "--profile", str(REPO / "workflow" / "profiles" / "slurm"),
                           "-n", "all"], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rule train_controlnet" in proc.stdout + proc.stderr and (tmp_path / ".snakemake").is_dir()


def test_installed_snakemake_never_runs_more_jobs_than_cores(tmp_path):
    """The local profile gives the DAG 2 cores and every torch job 1 thread. Snakemake 9.10 to
    at least 9.27 start more 1-thread jobs than cores once an upstream job finishes, which on a
    laptop triples the critical path; pyproject.toml pins a version that does not."""
    (tmp_path / "Snakefile").write_text(
        'rule all:\n    input: expand("out/{i}", i=range(6))\n'
        'rule up:\n    output: "up"\n    shell: "sleep 0.5; touch {output}"\n'
        'rule down:\n    input: "up"\n    output: "out/{i}"\n    threads: 1\n'
        '    shell: "echo + >> events; sleep 1.5; echo - >> events; touch {output}"\n')
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    proc = subprocess.run([SNAKEMAKE, "--cores", "2", "--quiet", "all"], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    running = peak = 0
    for event in (tmp_path / "events").read_text().split():
        running += 1 if event == "+" else -1
        peak = max(peak, running)
    assert peak == 2, f"{peak} one-thread jobs ran at once on 2 cores"
