"""The paper's evaluation section from a run's ``results/`` folder: Tables I-III, Figs. 2-3, report.md.

What each step reads (all written by earlier pipeline steps; no model is run here):

* Table I   ``metrics/<method>/summary.json`` of every method except LDPM's ablations
* Table II  ``metrics/<ldpm, ablation>/summary.json``
* Table III ``metrics/<method>/per_volume.csv`` of the Table I methods (mean PSNR per subset)
* Fig. 2    ``data/test/shard*.h5`` (``target``) and ``recon/<method>/shard*.h5`` (``recon``)
* Fig. 3    ``vae_recon/{untuned,mr}.h5`` and ``metrics/vae_{untuned,mr}/summary.json``
* plots     ``metrics/<method>/per_volume.csv`` and ``benchmarks/*/*.tsv`` (:mod:`ldpm.report.plots`)
* report    the above, plus ``provenance.json`` (config, git commit, data hashes)

Paper values come from ``config/paper_values.yaml`` (:mod:`ldpm.report.paper`) and are only
ever shown in their own ``(paper)`` / ``Δ`` columns.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd
import yaml

from ..errors import LdpmInputError
from ..io import write_text_atomic
from .figures import pick_examples, plot_examples, plot_vae_comparison, read_keys
from .paper import paper_note, paper_table
from ..methods.graph import table1_methods
from .tables import (NO_OOD, OOD_SUBSET, TABLE1_METRICS, TABLE2_METRICS, TABLE3_METRICS, TABLE3_SUBSETS,
                     VAE_METRICS, add_paper_columns, load_summary, metrics_long, numeric_table,
                     ood_title, subset_table, table2_methods, write_table)

#: Fig. 3's VAEs in the paper's column order (SD-VAE first, MR-VAE second).
FIG3_VAES = ("untuned", "mr")


#: the packages report.md names (provenance.json lists every installed one)
REPORTED_PACKAGES = ("ldpm", "torch", "torchvision", "diffusers", "peft", "safetensors", "numpy",
                     "h5py", "pandas", "scikit-image", "lpips", "torch-fidelity", "snakemake",
                     "papermill", "fastmri")


def _summary(results: Path, method: str) -> dict:
    path = results / "metrics" / method / "summary.json"
    if not path.is_file():
        raise LdpmInputError(path, "no metrics for this method", f"run the evaluate step for {method}")
    return load_summary(path)


def _summaries(results: Path, methods: Sequence[str]) -> list[dict]:
    return [_summary(results, m) for m in methods]


def make_table1(results: str | Path, methods: Sequence[str], paper: Mapping) -> list[Path]:
    """Table I: every Table I method x PSNR/SSIM/NMSE/LPIPS/rFID/KID, paper values beside."""
    results = Path(results)
    rows = table1_methods(methods)
    numeric = numeric_table(metrics_long(_summaries(results, rows)), TABLE1_METRICS)
    numeric = add_paper_columns(numeric, paper_table(paper, "table1"), TABLE1_METRICS)
    return write_table(numeric, results / "tables" / "table1",
                       "Table I: quantitative evaluation at 8x (test set)", TABLE1_METRICS,
                       paper_note=paper_note(paper, "table1"))


def make_table2(results: str | Path, methods: Sequence[str], paper: Mapping) -> list[Path]:
    """Table II: LDPM and its configured ablations x PSNR/SSIM, paper values beside."""
    results = Path(results)
    rows = table2_methods(methods)
    numeric = numeric_table(metrics_long(_summaries(results, rows)), TABLE2_METRICS)
    numeric = add_paper_columns(numeric, paper_table(paper, "table2"), TABLE2_METRICS)
    note = "Mean ± std over test volumes."
    if not rows:
        note += " No LDPM variant is in this run's config `methods`, so the table is empty."
    return write_table(numeric, results / "tables" / "table2",
                       "Table II: ablations of LDPM (test set, 8x)", TABLE2_METRICS,
                       note=note, paper_note=paper_note(paper, "table2"))


def per_volume_all(results: Path, methods: Sequence[str], subset: str = "") -> pd.DataFrame:
    """Every method's ``metrics/<method>/[<subset>/]per_volume.csv`` rows in one frame
    (``subset="ood"``: the out-of-distribution set's)."""
    frames = []
    for m in methods:
        path = results / "metrics" / m / subset / "per_volume.csv"
        if not path.is_file():
            step = f"evaluate_{subset}" if subset else "evaluate"
            raise LdpmInputError(path, "no per-volume metrics for this method", f"run the {step} step for {m}")
        frames.append(pd.read_csv(path, dtype={"volume": str, "subject": str, "contrast": str,
                                               "anatomy": str}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["method", "volume", "anatomy", "contrast", "field_strength", "psnr"])


def make_table3(results: str | Path, methods: Sequence[str], paper: Mapping,
                per_volume: pd.DataFrame | None = None, with_ood: bool = False) -> list[Path]:
    """Table III: PSNR per contrast and field strength of the brain test set, and on the
    out-of-distribution set (``with_ood``: ``metrics/<method>/ood/``), for every Table I method
    (``per_volume``: :func:`per_volume_all` of ``methods`` when the caller has read it already)."""
    results = Path(results)
    rows = table1_methods(methods)
    per_volume = per_volume_all(results, rows) if per_volume is None else per_volume
    ood_volumes = per_volume_all(results, rows, "ood") if with_ood else None
    brain = subset_table(per_volume, rows, TABLE3_SUBSETS, "psnr")
    if ood_volumes is not None:
        ood = subset_table(ood_volumes, rows, [OOD_SUBSET], "psnr")
    else:
        ood = pd.DataFrame({"method": rows, "ood": None, "ood_std": None, "ood_n": 0, "ood_na": NO_OOD})
    numeric = brain.merge(ood, on="method", how="left", sort=False)
    metrics = [*TABLE3_METRICS[:-1], ("ood", ood_title(ood_volumes), True, 2)]
    numeric = add_paper_columns(numeric, paper_table(paper, "table3"), metrics)
    note = ("PSNR (dB), mean over the subset's volumes (fastMRI per-volume PSNR); contrast and "
            "field-strength subsets are of the brain test set. OOD: the out-of-distribution set "
            "(data.ood_root, or dipy's real scans for the embedded data), reconstructed with the "
            "same seeded masks and never trained or tuned on; the paper's is fastMRI knee. "
            "The CSV also has each subset's std and number of volumes (`_n`).")
    return write_table(numeric, results / "tables" / "table3",
                       "Table III: PSNR across contrasts, field strengths and on out-of-distribution data",
                       metrics, show_std=False, note=note, paper_note=paper_note(paper, "table3"))


def make_fig2(results: str | Path, methods: Sequence[str], n_examples: int = 2) -> Path:
    """Fig. 2: ``n_examples`` test slices, GT and each Table I method with its error map."""
    results = Path(results)
    rows = table1_methods(methods)
    shards = sorted((results / "data" / "test").glob("shard*.h5"))
    gt = {k: v for s in shards for k, v in read_keys(s, "target").items()}
    recons = {m: {k: v for s in shards for k, v in read_keys(results / "recon" / m / s.name, "recon").items()}
              for m in rows}
    return plot_examples(gt, recons, pick_examples(list(gt), n_examples),
                         results / "figures" / "fig2_examples.png")


def make_fig3(results: str | Path, n_examples: int = 2) -> tuple[Path, list[Path]]:
    """Fig. 3 (untuned/SD VAE vs MR-VAE) and its set metrics as a small table (fig3_vae.*)."""
    from ..metrics.vae_eval import read_vae_recon

    results = Path(results)
    labels, recons, summaries, gt = {}, {}, [], {}
    for kind in FIG3_VAES:
        label, target, recon = read_vae_recon(results / "vae_recon" / f"{kind}.h5")
        labels[kind], recons[label] = label, recon
        gt = gt or target
        summaries.append(_summary(results, f"vae_{kind}"))
    set_metrics = {labels[k]: s["metrics"] for k, s in zip(FIG3_VAES, summaries)}
    fig = plot_vae_comparison(gt, recons, set_metrics, pick_examples(list(gt), n_examples),
                              results / "figures" / "fig3_vae.png")
    numeric = numeric_table(metrics_long(summaries), VAE_METRICS)
    numeric.insert(1, "name", [labels[m.removeprefix("vae_")] for m in numeric["method"]])
    tables = write_table(numeric, results / "tables" / "fig3_vae",
                         "Fig. 3 metrics: VAE reconstructions of the ground-truth test slices",
                         VAE_METRICS, note="PSNR/SSIM: mean ± std over test volumes; rFID over all test slices. "
                         "The paper prints its Fig. 3 numbers only inside the figure image, so there is "
                         "no paper column.")
    return fig, tables


def make_training_curves(results: str | Path, stages: Sequence[str]) -> Path:
    """``figures/training_curves.{png,pdf}``: :func:`ldpm.report.plots.training_curves` of each
    stage's ``results/models/<stage>/log.csv``."""
    from .plots import write_training_curves

    return write_training_curves(results, stages, "training_curves")[0]


def make_plots(results: str | Path, methods: Sequence[str], stages: Sequence[str],
               per_volume: pd.DataFrame | None = None) -> list[Path]:
    """The report's plots and the cost table (:mod:`ldpm.report.plots`): per-volume PSNR/SSIM,
    PSNR per contrast and field strength, cost per job (``tables/cost.*`` and
    ``figures/cost.*``) and quality against time, from ``metrics/`` and ``benchmarks/``
    (``per_volume``: :func:`per_volume_all` of ``methods`` when the caller has read it already)."""
    from .plots import (cost_table, plot_costs, plot_per_volume, plot_quality_vs_time,
                        plot_subsets, write_cost_table)

    results = Path(results)
    figures = results / "figures"
    per_volume = per_volume_all(results, methods) if per_volume is None else per_volume
    summaries = {m: _summary(results, m) for m in methods}
    costs = cost_table(results, methods, stages, {m: int(s.get("n_slices") or 0) for m, s in summaries.items()})
    psnr = {m: s["metrics"]["psnr"]["mean"] for m, s in summaries.items()
            if (s["metrics"].get("psnr") or {}).get("mean") is not None}
    return [plot_per_volume(per_volume, methods, figures / "per_volume.png"),
            plot_subsets(per_volume, table1_methods(methods), figures / "subsets.png"),
            *write_cost_table(costs, results / "tables" / "cost"),
            plot_costs(costs, figures / "cost.png"),
            plot_quality_vs_time(costs, psnr, figures / "quality_time.png")]


def data_hash(provenance: Mapping) -> str:
    """One SHA-256 over the run's data files: of the sorted ``"<sha256>  <path>"`` lines."""
    lines = sorted(f"{h}  {p}" for p, h in (provenance.get("data_sha256") or {}).items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def training_notes(results: Path, config: Mapping) -> str:
    """What each training stage's ``meta.json`` notes (e.g. a loss term that was off), and the
    config's explicit opt-outs, as a markdown list."""
    lines = []
    if (config.get("pretrained") or {}).get("vae_without_vgg"):
        lines.append("- MR-VAE was trained **without eq. 5's VGG term**: the config sets "
                     "`pretrained.vae_without_vgg: true`.")
    for meta in sorted((results / "models").glob("*/meta.json")):
        for note in json.loads(meta.read_text()).get("notes") or []:
            lines.append(f"- `{meta.parent.name}`: {note}")
    return "\n".join(lines) or "- none: every stage trained with all its loss terms."


def write_report(results: str | Path, with_fig3: bool = True) -> Path:
    """``results/report.md``: Tables I-III, Figs. 2-3 and the provenance of the run, in one file."""
    results = Path(results)
    prov_path = results / "provenance.json"
    if not prov_path.is_file():
        raise LdpmInputError(prov_path, "no provenance record", "run the provenance step first")
    prov = json.loads(prov_path.read_text())
    md = lambda name: (results / "tables" / f"{name}.md").read_text().strip()  # noqa: E731
    parts = [
        "# LDPM: the paper's evaluation section, regenerated from this run",
        f"Git commit `{prov.get('git_commit', 'unknown')}` · data hash `{data_hash(prov)}` "
        f"(SHA-256 of the per-file hashes listed under Provenance) · data source "
        f"`{(prov.get('config') or {}).get('data', {}).get('source', '?')}`.",
        "Every number in our columns was computed by this run's evaluate step (or is `n/a` with "
        "its reason); the `(paper)` columns are the paper's published values from "
        "`config/paper_values.yaml`, shown beside ours with Δ = ours − paper.",
        "## Table I: all methods", md("table1"),
        "## Table II: ablations", md("table2"),
        "## Table III: robustness", md("table3"),
        "## Fig. 2: example reconstructions at 8x",
        "Ground truth and each method (PSNR of the slice in the title), error maps beneath "
        "(|error| / volume max, scale 0-0.2).\n\n![Fig. 2](figures/fig2_examples.png)\n\n"
        "[PDF](figures/fig2_examples.pdf)",
    ]
    if with_fig3:
        parts += ["## Fig. 3: MR-VAE vs the untuned (or SD) VAE",
                  "Each ground-truth test slice encoded and decoded by each VAE; error maps are "
                  "|error| / volume max (scale 0-0.2); the dashed box is enlarged in the corner.\n\n"
                  "![Fig. 3](figures/fig3_vae.png)\n\n[PDF](figures/fig3_vae.pdf)", md("fig3_vae")]
    else:
        parts += ["## Fig. 3: not produced",
                  "No configured method uses the MR-VAE (LDPM or an ablation), so no VAE was trained."]
    if (results / "figures" / "training_curves.png").is_file():
        parts += ["## Training curves",
                  "Each stage's logged loss against the step (running mean over 25 steps over the "
                  "raw values; the VAE stages also show the L1 error, and a dashed line where the "
                  "GAN term of eq. 5 starts).\n\n![training curves](figures/training_curves.png)"]
    if (results / "figures" / "per_volume.png").is_file():
        parts += ["## Per-volume scores",
                  "PSNR and SSIM of every test volume per method (box: quartiles; points: "
                  "volumes).\n\n![per-volume scores](figures/per_volume.png)",
                  "## PSNR per contrast and field strength",
                  "Table III's brain subsets as bars (mean ± std over the subset's volumes)."
                  "\n\n![subsets](figures/subsets.png)",
                  "## Cost per job",
                  "Wall time and peak memory of every job, from its Snakemake benchmark file: "
                  "[tables/cost.md](tables/cost.md) (wall-clock numbers, so they are kept out of "
                  "this file, which stays byte-identical between runs of the same seed)."
                  "\n\n![cost per job](figures/cost.png)\n\n![quality against time](figures/quality_time.png)"]
    parts += ["## Training notes", training_notes(results, prov.get("config") or {})]
    hashes = "\n".join(f"| `{p}` | `{h}` |" for key in ("data_sha256", "input_sha256", "weights_sha256")
                       for p, h in sorted((prov.get(key) or {}).items()))
    installed = prov.get("packages") or {}
    packages = ", ".join(f"{k} {installed[k]}" for k in REPORTED_PACKAGES if k in installed)
    packages += f" ({len(installed)} packages in provenance.json)"
    acc = prov.get("accelerator") or {}
    packages += f"\n- accelerator: {', '.join(acc.get('gpus') or []) or 'CPU only'} (torch CUDA build: {acc.get('torch_cuda')})"
    parts += [
        "## Provenance",
        f"- git commit: `{prov.get('git_commit', 'unknown')}`\n- python {prov.get('python', '?')} "
        f"on {prov.get('platform', '?')}\n- packages: {packages}\n- executed notebook: "
        "`notebooks/report.ipynb`",
        "### Data, input volumes and external weights (SHA-256)", "| file | sha256 |\n|---|---|\n" + hashes,
        "### Config", "```yaml\n" + yaml.safe_dump(prov.get("config") or {}, sort_keys=False).strip() + "\n```",
    ]
    out = results / "report.md"
    write_text_atomic(out, "\n\n".join(parts) + "\n")
    return out
