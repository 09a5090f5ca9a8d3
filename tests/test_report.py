"""The report stage: Tables I-III, Figs. 2-3 and report.md from fabricated results/ files.

The notebook runs under papermill exactly as the `report` rule runs it; every table value is
checked against the metrics file it came from, and the (paper) columns against the paper file.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from ldpm.report.paper import load_paper_values, paper_table
from ldpm.report.tables import NO_OOD, TABLE3_SUBSETS, display_table, subset_table

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "config" / "paper_values.yaml"
PAPER_LINES = Path(__file__).parent / "data" / "paper_table_lines.tsv"
NOTEBOOK = REPO / "workflow" / "notebooks" / "report.ipynb"

# zero_filled/unet/ldpm: Table I rows with paper values; my_method: a Table I row the paper lacks;
# ldpm_wo_skm: the one ablation run here (Table II with LDPM).
METHODS = ["zero_filled", "unet", "ldpm", "my_method", "ldpm_wo_skm"]
# (volume, contrast, field strength): no T1PRE, no T1POST and no knee volume in this test set
VOLUMES = [("file_brain_AXT1_1p5T_s001", "T1", 1.5), ("file_brain_AXT2_1p5T_s001", "T2", 1.5),
           ("file_brain_AXFLAIR_3T_s002", "FLAIR", 3.0), ("file_brain_AXT1_3T_s002", "T1", 3.0)]
SLICES, SIZE = 2, 16
STR = h5py.string_dtype()


def _entry(value, std=None, reason=None):
    return {"value": value, "std": std, "reason": reason}


def _write_h5(path: Path, **datasets) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key, value in datasets.items():
            if key == "attrs":
                f.attrs.update(value)
            elif key == "volume":
                f.create_dataset(key, data=np.array(value, dtype=object), dtype=STR)
            else:
                f.create_dataset(key, data=value)


def _metrics(out: Path, method: str, rng: np.random.Generator, per_volume: bool = True) -> dict:
    psnr = 20 + 10 * rng.random(len(VOLUMES))
    summary = {"method": method, "n_volumes": len(VOLUMES), "n_slices": SLICES * len(VOLUMES), "metrics": {
        "psnr": _entry(float(psnr.mean()), float(psnr.std(ddof=1))),
        "ssim": _entry(float(rng.random()), float(rng.random() / 10)),
        "nmse": _entry(float(rng.random() / 10), float(rng.random() / 100)),
        "lpips": _entry(None, None, "AlexNet weights not available offline"),
        "rfid": _entry(float(100 * rng.random())),
        "kid": _entry(float(rng.random() / 10), float(rng.random() / 100))}}
    d = out / "metrics" / method
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps(summary))
    if per_volume:
        pd.DataFrame([{"method": method, "volume": v, "subject": v[-4:], "anatomy": "brain", "contrast": c,
                       "field_strength": fs, "n_slices": SLICES, "psnr": p, "ssim": 0.5, "nmse": 0.1}
                      for (v, c, fs), p in zip(VOLUMES, psnr)]).to_csv(d / "per_volume.csv", index=False)
    return summary


@pytest.fixture(scope="module")
def fabricated(tmp_path_factory) -> tuple[Path, dict]:
    """A results/ folder with every input the report rule declares, all made up."""
    res = tmp_path_factory.mktemp("report") / "results"
    rng = np.random.default_rng(0)
    summaries = {m: _metrics(res, m, rng) for m in METHODS}
    keys = [(v, s) for v, *_ in VOLUMES for s in range(SLICES)]
    target = rng.random((len(keys), SIZE, SIZE)).astype(np.float32)
    common = {"volume": [k[0] for k in keys], "slice": np.array([k[1] for k in keys])}
    _write_h5(res / "data" / "test" / "shard0.h5", target=target, **common)
    for m in METHODS:
        _write_h5(res / "recon" / m / "shard0.h5", recon=target + 0.05 * rng.random(target.shape), **common)
    for kind, label in (("mr", "MR-VAE"), ("untuned", "untuned VAE")):
        _write_h5(res / "vae_recon" / f"{kind}.h5", target=target, recon=target * 0.9, **common,
                  attrs={"label": label, "vae": kind})
        summaries[f"vae_{kind}"] = _metrics(res, f"vae_{kind}", rng, per_volume=False)
    (res / "provenance.json").write_text(json.dumps({
        "config": {"data": {"source": "embedded"}, "methods": METHODS}, "git_commit": "abc123-dirty",
        "python": "3.x", "platform": "test", "packages": {"ldpm": "0"},
        "data_sha256": {"results/data/test/shard0.h5": "f" * 64}}))
    return res, summaries


@pytest.fixture(scope="module")
def executed(fabricated) -> tuple[Path, dict]:
    """The report notebook, run by papermill with the rule's parameters."""
    import papermill as pm

    res, summaries = fabricated
    (res / "notebooks").mkdir()  # snakemake makes the output folder before running the rule
    pm.execute_notebook(str(NOTEBOOK), str(res / "notebooks" / "report.ipynb"), kernel_name="python3",
                        parameters={"results_dir": str(res), "methods": ",".join(METHODS),
                                    "paper_values": str(PAPER), "with_fig3": 1},
                        progress_bar=False, cwd=str(res.parent))
    return res, summaries


def test_notebook_writes_every_output(executed):
    res, _ = executed
    for table in ("table1", "table2", "table3", "fig3_vae"):
        for ext in ("csv", "md", "tex"):
            assert (res / "tables" / f"{table}.{ext}").stat().st_size > 0
    for fig in ("fig2_examples", "fig3_vae"):
        assert (res / "figures" / f"{fig}.png").stat().st_size > 1000
        assert (res / "figures" / f"{fig}.pdf").stat().st_size > 1000
    assert (res / "notebooks" / "report.ipynb").is_file()


def test_table1_and_table2_values_are_the_summaries(executed):
    res, summaries = executed
    t1 = pd.read_csv(res / "tables" / "table1.csv").set_index("method")
    assert list(t1.index) == ["zero_filled", "unet", "ldpm", "my_method"]  # ablations are Table II's
    t2 = pd.read_csv(res / "tables" / "table2.csv").set_index("method")
    assert list(t2.index) == ["ldpm_wo_skm", "ldpm"]
    for table, keys in ((t1, ("psnr", "ssim", "nmse", "rfid", "kid")), (t2, ("psnr", "ssim"))):
        for method in table.index:
            for key in keys:
                m = summaries[method]["metrics"][key]
                assert table.loc[method, key] == m["value"]  # exact: CSV round-trips floats
                if m["std"] is not None:
                    assert table.loc[method, f"{key}_std"] == m["std"]
    assert t1["lpips"].isna().all() and (t1["lpips_na"] == "AlexNet weights not available offline").all()
    md = (res / "tables" / "table1.md").read_text()
    assert "LPIPS (all methods): n/a: AlexNet weights not available offline" in md
    f3 = pd.read_csv(res / "tables" / "fig3_vae.csv").set_index("method")
    for kind in ("mr", "untuned"):
        for key in ("psnr", "ssim", "rfid"):
            assert f3.loc[f"vae_{kind}", key] == summaries[f"vae_{kind}"]["metrics"][key]["value"]


def test_table3_values_are_per_volume_means_and_empty_subsets_say_why(executed):
    res, _ = executed
    t3 = pd.read_csv(res / "tables" / "table3.csv").set_index("method")
    assert list(t3.index) == ["zero_filled", "unet", "ldpm", "my_method"]
    for method in t3.index:
        pv = pd.read_csv(res / "metrics" / method / "per_volume.csv")
        expect = {"FLAIR": pv.contrast == "FLAIR", "T1": pv.contrast == "T1", "T2": pv.contrast == "T2",
                  "1.5T": pv.field_strength == 1.5, "3T": pv.field_strength == 3.0}
        for key, sel in expect.items():
            assert t3.loc[method, key] == pytest.approx(pv.loc[sel, "psnr"].mean(), rel=1e-12)
            assert t3.loc[method, f"{key}_n"] == sel.sum()
        for key in ("T1PRE", "T1POST", "ood"):
            assert pd.isna(t3.loc[method, key]) and t3.loc[method, f"{key}_n"] == 0
        assert t3.loc[method, "ood_na"] == NO_OOD  # this run scored no out-of-distribution set
        assert t3.loc[method, "T1PRE_na"] == "no T1PRE brain volumes in this test set"
    md = (res / "tables" / "table3.md").read_text()
    assert f"OOD (all methods): n/a: {NO_OOD}" in md
    assert "T1PRE (all methods): n/a: no T1PRE brain volumes in this test set" in md


def test_paper_columns_hold_only_the_papers_values(executed):
    res, _ = executed
    paper = load_paper_values(PAPER)
    for table, name, keys in (("table1", "table1", ("psnr", "ssim", "nmse", "lpips", "rfid", "kid")),
                              ("table2", "table2", ("psnr", "ssim")),
                              ("table3", "table3", [k for k, *_ in TABLE3_SUBSETS] + ["ood"])):
        df = pd.read_csv(res / "tables" / f"{table}.csv").set_index("method")
        published = paper_table(paper, name)
        for method in df.index:
            for key in keys:
                p = published.get(method, {}).get(key)
                if p is None:  # a method the paper does not have: empty, never filled with ours
                    assert pd.isna(df.loc[method, f"{key}_paper"]) and pd.isna(df.loc[method, f"{key}_delta"])
                    continue
                assert df.loc[method, f"{key}_paper"] == p
                assert df.loc[method, key] != p  # our column is ours
                if pd.isna(df.loc[method, key]):
                    assert pd.isna(df.loc[method, f"{key}_delta"])
                else:
                    assert df.loc[method, f"{key}_delta"] == pytest.approx(df.loc[method, key] - p, abs=1e-12)
    md = (res / "tables" / "table1.md").read_text()
    assert "PSNR ↑ (paper)" in md and "Δ PSNR" in md
    assert "30.2048" in md and "26.7036" in md  # LDPM's and U-Net's published PSNR, as printed
    tex = (res / "tables" / "table1.tex").read_text()
    assert r"$\Delta$" in tex and r"\textbf{" in tex


def test_paper_file_matches_the_paper_text():
    """Spot checks of config/paper_values.yaml against the paper's tables (seed text)."""
    paper = load_paper_values(PAPER)
    t1, t2, t3 = (paper_table(paper, t) for t in ("table1", "table2", "table3"))
    assert t1["ldpm"] == {"psnr": 30.2048, "ssim": 0.8042, "nmse": 0.0247, "lpips": 0.1725,
                          "rfid": 29.1384, "kid": 0.0116}
    assert t1["zero_filled"]["rfid"] == 265.0842 and t1["score_mri"]["kid"] == 0.0025
    assert t2["ldpm_wo_mrvae"] == {"psnr": 26.2837, "ssim": 0.7166} and t2["ldpm"] == {k: t1["ldpm"][k]
                                                                                       for k in ("psnr", "ssim")}
    assert t3["unet"]["ood"] == 13.6225 and t3["score_mri"]["ood"] == 22.242 and t3["ldpm"]["1.5T"] == 30.1087
    assert set(t3["ldpm"]) == {k for k, *_ in TABLE3_SUBSETS} | {"ood"}
    assert set(t1) == {"zero_filled", "unet", "varnet", "swinmr", "score_mri", "ldpm"}
    # every value sits on the paper-text line it cites (the lines vendored in tests/data)
    lines = dict(line.split("\t", 1) for line in PAPER_LINES.read_text().splitlines()
                 if not line.startswith("#"))
    raw = yaml.safe_load(PAPER.read_text())
    checked = 0
    for table in ("table1", "table2", "table3"):
        for method, row in raw[table]["values"].items():
            text = lines[str(row["line"])].split("\t")
            for key, value in row.items():
                if key != "line":
                    assert any(float(t) == value for t in text[1:] if t.strip()), (table, method, key)
                    checked += 1
    assert checked == sum(len(row) - 1 for t in ("table1", "table2", "table3")
                          for row in raw[t]["values"].values()) > 50


def test_report_md_strings_everything_together(executed):
    res, _ = executed
    report = (res / "report.md").read_text()
    for table in ("table1", "table2", "table3", "fig3_vae"):
        assert (res / "tables" / f"{table}.md").read_text().strip() in report
    assert "figures/fig2_examples.png" in report and "figures/fig3_vae.png" in report
    assert "abc123-dirty" in report and "f" * 64 in report and "source: embedded" in report


def test_subset_table_and_na_footnotes_unit():
    pv = pd.DataFrame([
        {"method": "a", "volume": "v1", "anatomy": "brain", "contrast": "T1", "field_strength": 1.494, "psnr": 30.0},
        {"method": "a", "volume": "v2", "anatomy": "knee", "contrast": "PD", "field_strength": 2.89, "psnr": 20.0},
        {"method": "b", "volume": "v1", "anatomy": "brain", "contrast": "T1", "field_strength": 1.494, "psnr": 28.0},
    ])
    t = subset_table(pv, ["a", "b"]).set_index("method")
    assert t.loc["a", "T1"] == 30.0 and t.loc["a", "1.5T"] == 30.0
    assert pd.isna(t.loc["a", "3T"])  # the 3 T volume is a knee: not in the brain subsets
    assert pd.isna(t.loc["b", "3T"]) and t.loc["b", "3T_na"] == "no 3 T brain volumes in this test set"
    from ldpm.report.tables import TABLE3_METRICS
    shown, notes = display_table(t.reset_index(), TABLE3_METRICS[:-1], show_std=False)
    assert shown.loc[1, "3 T"] == "n/a"
    assert any(n == "3 T (all methods): n/a: no 3 T brain volumes in this test set" for n in notes)
    assert shown.loc[0, "T1"] == "**30.00**" and shown.loc[1, "T1"] == "_28.00_"
    from ldpm.report.tables import _rank_marks
    assert _rank_marks(pd.Series([1.0, 2.0, 2.0, 0.5]), True) == {1: "best", 2: "best"}  # a tie shares best
    assert _rank_marks(pd.Series([1.0, 2.0, 3.0, None]), False) == {0: "best", 1: "second"}


def test_vae_recon_cli_and_its_evaluation(tmp_path):
    """`ldpm vae-recon` on a tiny VAE, then the VAE file scored by `ldpm evaluate` (rule evaluate_vae)."""
    import torch

    from ldpm.cli import main
    from ldpm.metrics.vae_eval import read_vae_recon
    from ldpm.models import build_vae

    model_cfg = {"block_out_channels": [8, 8, 8, 8], "norm_num_groups": 4, "mid_block_add_attention": False}
    torch.manual_seed(0)
    build_vae(model_cfg).save_pretrained(tmp_path / "vae" / "final")
    torch.manual_seed(1)
    build_vae(model_cfg).save_pretrained(tmp_path / "vae_natural" / "final")
    rng = np.random.default_rng(1)
    rows, shards = [], []
    for k, vols in enumerate((["volA"], ["volB", "volC"])):
        keys = [(v, s) for v in vols for s in range(2)]
        target = (2 + rng.random((len(keys), 16, 16))).astype(np.float32)
        vmax = {v: float(target[[i for i, kk in enumerate(keys) if kk[0] == v]].max()) for v in vols}
        shards.append(tmp_path / f"shard{k}.h5")
        from ldpm.mri import mask_for_slice
        _write_h5(shards[-1], target=target, volume=[v for v, _ in keys], slice=np.array([s for _, s in keys]),
                  volume_max=np.array([vmax[v] for v, _ in keys], np.float32),
                  mask=np.stack([mask_for_slice(v, s, 16, 4) for v, s in keys]).astype(np.float32))
        rows += [{"volume": v, "slice": s, "subject": v, "anatomy": "brain", "contrast": "T1",
                  "field_strength": 3.0, "crop_width": 16, "volume_max": vmax[v], "store": "x", "split": "test"} for v, s in keys]
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    outs = {k: tmp_path / "vae_recon" / f"{k}.h5" for k in ("mr", "untuned")}
    argv = ["vae-recon", "--data", *map(str, shards), "--vae-dir", str(tmp_path / "vae"), "--sd-path", "",
            "--untuned-dir", str(tmp_path / "vae_natural")]
    for k, p in outs.items():
        argv += ["--output", f"{k}={p}"]
    assert main(argv) == 0
    label, gt, recon = read_vae_recon(outs["mr"])
    assert label == "MR-VAE" and len(gt) == len(recon) == 6 and next(iter(recon.values())).shape == (16, 16)
    with h5py.File(shards[1]) as f:
        np.testing.assert_array_equal(gt[("volB", 1)], f["target"][1])  # ground truth copied, not altered
    assert read_vae_recon(outs["untuned"])[0] == "natural-image VAE (untuned)"
    # the untuned row is the vae_natural folder's VAE: the same output as that VAE run by hand
    from ldpm.metrics.vae_eval import autoencode
    from ldpm.mri import zero_filled
    from ldpm.methods import measure
    from ldpm.checkpoints import load_vae
    with h5py.File(shards[0]) as f:
        x, m = f["target"][()], f["mask"][()]
    s = np.abs(zero_filled(measure(x, m))).reshape(len(x), -1).max(1)[:, None, None]
    by_hand = autoencode(load_vae(tmp_path / "vae_natural"), (x / s).astype(np.float32)) * s
    np.testing.assert_allclose(read_vae_recon(outs["untuned"])[2][("volA", 0)], by_hand[0], atol=1e-4)
    assert not np.allclose(read_vae_recon(outs["untuned"])[2][("volA", 0)], recon[("volA", 0)], atol=1e-3)
    out_dir = tmp_path / "metrics" / "vae_mr"
    assert main(["evaluate", "--method", "vae_mr", "--recon", str(outs["mr"]), "--data", str(outs["mr"]),
                 "--manifest", str(tmp_path / "manifest.csv"), "--out-dir", str(out_dir),
                 "--kid-subset-size", "4"]) == 0
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["n_volumes"] == 3 and summary["n_slices"] == 6
    assert summary["metrics"]["psnr"]["value"] is not None and summary["metrics"]["ssim"]["value"] is not None


def test_provenance_records_packages_accelerator_inputs_and_weights(tmp_path):
    """Every installed package (peft, safetensors, fastmri included), the accelerator, and the
    SHA-256 of each raw input volume (through the manifest) and each configured weight file,
    checked against hashlib; a configured file that is not there is marked absent."""
    import hashlib

    from conftest import write_fastmri_file

    from ldpm.data.store import build_manifest, preprocess_volume
    from ldpm.report.provenance import write_provenance

    raws, stores = [], []
    (tmp_path / "raw").mkdir()
    for i in range(4):
        raws.append(write_fastmri_file(tmp_path / "raw" / f"v{i}.h5", patient_id=f"p{i}", seed=i))
        stores.append(preprocess_volume(raws[-1], tmp_path / "slices" / f"v{i}.h5", 16, 1))
    manifest = tmp_path / "manifest.csv"
    build_manifest(stores, manifest, {"train": 0.5, "val": 0.0, "test": 0.5}, seed=0)
    sd = tmp_path / "sd"
    (sd / "unet").mkdir(parents=True)
    (sd / "unet" / "config.json").write_text("{}")
    (sd / "unet" / "w.safetensors").write_bytes(b"weights")
    vgg = tmp_path / "vgg16.pth"
    vgg.write_bytes(b"vgg")
    config = {"pretrained": {"sd_path": str(sd), "vgg16_path": str(vgg), "vgg19_path": None},
              "metrics": {"lpips_backbone": str(tmp_path / "gone.pth")},
              "inference": {"unet_official": {"checkpoint": None}}}
    out = tmp_path / "provenance.json"
    write_provenance(out, json.dumps(config), [manifest], manifest=manifest)
    rec = json.loads(out.read_text())
    assert {"torch", "peft", "safetensors", "fastmri", "diffusers"} <= set(rec["packages"])
    assert rec["accelerator"]["gpus"] == [] or all(rec["accelerator"]["gpus"])

    def digest(p):
        return hashlib.sha256(Path(p).read_bytes()).hexdigest()

    assert rec["input_sha256"] == {str(p): digest(p) for p in raws}
    assert rec["weights_sha256"] == {str(sd / "unet" / "config.json"): digest(sd / "unet" / "config.json"),
                                     str(sd / "unet" / "w.safetensors"): digest(sd / "unet" / "w.safetensors"),
                                     str(vgg): digest(vgg), str(tmp_path / "gone.pth"): "absent"}
    assert rec["data_sha256"] == {str(manifest): digest(manifest)}


def test_cost_table_sums_each_methods_benchmark_files(tmp_path):
    """The cost table is Snakemake's benchmark files: a method's shards summed, its seconds per
    slice over its test slices, the largest job's peak memory; missing jobs are left out."""
    from ldpm.report.plots import cost_table

    head = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"

    def bench(rel: str, seconds: float, rss: float) -> None:
        path = tmp_path / "benchmarks" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(head + f"{seconds}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t50\t1\n")

    bench("reconstruct/ldpm_0.tsv", 10.0, 100.0)
    bench("reconstruct/ldpm_1.tsv", 30.0, 300.0)
    bench("reconstruct/ldpm_wo_dss_0.tsv", 5.0, 50.0)   # another method, not one of ldpm's shards
    bench("train/vae.tsv", 7.5, 80.0)
    bench("preprocess/a.tsv", 1.0, 10.0)
    bench("preprocess/b.tsv", 2.0, 20.0)
    costs = cost_table(tmp_path, ["ldpm", "unet"], ["vae", "sketcher"], {"ldpm": 8}).set_index(["kind", "name"])
    assert costs.loc[("reconstruct", "ldpm"), "jobs"] == 2
    assert costs.loc[("reconstruct", "ldpm"), "seconds"] == pytest.approx(40.0)
    assert costs.loc[("reconstruct", "ldpm"), "seconds_per_slice"] == pytest.approx(5.0)
    assert costs.loc[("reconstruct", "ldpm"), "peak_rss_mb"] == pytest.approx(300.0)
    assert costs.loc[("train", "vae"), "seconds"] == pytest.approx(7.5)
    assert costs.loc[("preprocess", "all volumes"), "seconds"] == pytest.approx(3.0)
    assert ("reconstruct", "unet") not in costs.index and ("train", "sketcher") not in costs.index


def test_table3_ood_column_is_the_ood_sets_mean_and_says_what_the_set_is(tmp_path):
    """``make_table3(with_ood=True)``: the OOD column is the mean PSNR over every volume of
    ``metrics/<method>/ood/per_volume.csv`` (none of them in the brain subsets), titled by the
    set's anatomy and contrasts; the paper's knee value sits in its "(paper)" column."""
    from ldpm.report.build import make_table3
    from ldpm.report.paper import load_paper_values

    res = tmp_path / "results"
    for method, base in (("zero_filled", 18.0), ("unet", 15.0)):
        for sub, rows in (("", [("v1", "brain", "T1", 1.5, base + 10)]),
                          ("ood", [("k1", "knee", "PD", 3.0, base), ("k2", "knee", "PDFS", 1.5, base + 2)])):
            d = res / "metrics" / method / sub
            d.mkdir(parents=True, exist_ok=True)
            pd.DataFrame([{"method": method, "volume": v, "subject": v, "anatomy": a, "contrast": c,
                           "field_strength": f, "n_slices": 1, "psnr": x, "ssim": 0.5, "nmse": 0.1}
                          for v, a, c, f, x in rows]).to_csv(d / "per_volume.csv", index=False)
    csv, md = make_table3(res, ["zero_filled", "unet"], load_paper_values(PAPER), with_ood=True)[:2]
    t3 = pd.read_csv(csv).set_index("method")
    assert t3.loc["zero_filled", "ood"] == 19.0 and t3.loc["unet", "ood"] == 16.0
    assert (t3["ood_n"] == 2).all() and t3.loc["unet", "ood_paper"] == 13.6225
    assert t3.loc["unet", "T1"] == 25.0 and t3.loc["unet", "1.5T"] == 25.0  # the OOD volumes are apart
    assert "OOD (knee PD, PDFS)" in md.read_text()
    (res / "metrics" / "ldpm").mkdir()
    (res / "metrics" / "unet" / "per_volume.csv").rename(res / "metrics" / "ldpm" / "per_volume.csv")
    with pytest.raises(Exception, match="ldpm/ood/per_volume.csv: .*run the evaluate_ood step for ldpm"):
        make_table3(res, ["zero_filled", "ldpm"], load_paper_values(PAPER), with_ood=True)


def test_training_curves_panel_per_stage_and_first_last_tenth_means(tmp_path):
    """``training_curves``: one panel per stage titled by it (raw loss and moving average; a log
    axis when the loss spans > 10x), a stage without log.csv as a panel that says so, and the
    mean loss over each stage's first and last 10% of logged steps."""
    from ldpm.report.figures import save_figure
    from ldpm.report.plots import training_curves

    falling = pd.DataFrame({"step": range(100), "loss": np.linspace(10.0, 0.1, 100), "lr": 1e-4})
    flat = pd.DataFrame({"step": range(40), "loss": [1.0, 3.0] * 20})
    for stage, df in (("falling", falling), ("flat", flat)):
        (tmp_path / "models" / stage).mkdir(parents=True)
        df.to_csv(tmp_path / "models" / stage / "log.csv", index=False)
    fig, losses = training_curves(tmp_path, ["falling", "flat", "gone", "flat"])
    assert [ax.get_title() for ax in fig.axes] == ["falling", "flat", "gone"]
    by_title = {ax.get_title(): ax for ax in fig.axes}
    assert len(by_title["falling"].lines) == 2 and by_title["falling"].get_yscale() == "log"
    assert len(by_title["flat"].lines) == 2 and by_title["flat"].get_yscale() == "linear"
    assert not by_title["gone"].lines and "no log.csv" in by_title["gone"].texts[0].get_text()
    losses = losses.set_index("stage")
    assert list(losses.index) == ["falling", "flat", "gone"]
    assert losses.loc["falling", "steps"] == 100
    assert losses.loc["falling", "first_10pct"] == pytest.approx(falling["loss"][:10].mean())
    assert losses.loc["falling", "last_10pct"] == pytest.approx(falling["loss"][-10:].mean())
    assert bool(losses.loc["falling", "fell"]) and not bool(losses.loc["flat", "fell"])
    assert losses.loc["flat", "first_10pct"] == pytest.approx(2.0)
    assert losses.loc["flat", "last_10pct"] == pytest.approx(2.0)
    assert pd.isna(losses.loc["gone", "first_10pct"])
    assert "no log.csv" in losses.loc["gone", "missing"]
    out = save_figure(fig, tmp_path / "figures" / "curves.png")
    assert out.stat().st_size > 1000 and out.with_suffix(".pdf").is_file()
