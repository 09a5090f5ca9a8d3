"""The report's statistical plots (seaborn, one theme) and the cost of each job.

* :func:`plot_per_volume`: PSNR and SSIM of every test volume, per method (box + points), from
  ``metrics/<method>/per_volume.csv``;
* :func:`plot_subsets`: mean PSNR per contrast and per field strength, per method (grouped bars
  beside Table III), from the same files;
* :func:`cost_table` / :func:`plot_costs`: wall time and peak memory of every training stage and
  every method's reconstruction, read from the ``benchmark:`` files Snakemake writes for each job
  (``benchmarks/{train,reconstruct,evaluate,preprocess}/*.tsv``);
* :func:`plot_quality_vs_time`: test PSNR against reconstruction seconds per slice, per method;
* :func:`training_curves`: each training stage's loss against the step (``models/<stage>/log.csv``)
  and the mean loss over its first and last 10% of steps (the studies' notebooks show both).

Every figure is written as PNG and PDF (:func:`ldpm.report.figures.save_figure`).
"""

from __future__ import annotations

import contextlib
import math
import re
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import pandas as pd

from .figures import plt, save_figure
from .tables import METHOD_NAMES

#: the seaborn theme of every plot in the report
THEME = {"style": "whitegrid", "context": "paper", "palette": "colorblind"}

#: Snakemake's benchmark columns the cost table keeps: wall seconds and peak resident memory (MB)
BENCHMARK_COLUMNS = {"s": "seconds", "max_rss": "peak_rss_mb"}


@contextlib.contextmanager
def themed() -> Iterator[None]:
    """Draw inside the report's seaborn theme without changing matplotlib's global state."""
    import seaborn as sns

    with sns.axes_style(THEME["style"]), sns.plotting_context(THEME["context"]), \
            sns.color_palette(THEME["palette"]):
        yield


def _names(methods: Sequence[str]) -> list[str]:
    return [METHOD_NAMES.get(m, m) for m in methods]


def plot_per_volume(per_volume: pd.DataFrame, methods: Sequence[str], out_png: Path) -> Path:
    """Box plots with every volume as a point: PSNR (left) and SSIM (right) per method."""
    import seaborn as sns

    df = per_volume[per_volume["method"].isin(methods)].assign(
        name=lambda d: d["method"].map(lambda m: METHOD_NAMES.get(m, m)))
    order = _names(methods)
    with themed():
        fig, axes = plt.subplots(1, 2, figsize=(10, 0.35 * len(methods) + 1.5), squeeze=False)
        for ax, metric, label in zip(axes[0], ("psnr", "ssim"), ("PSNR (dB)", "SSIM")):
            sns.boxplot(data=df, x=metric, y="name", order=order, ax=ax, color="0.9",
                        showfliers=False)
            sns.stripplot(data=df, x=metric, y="name", order=order, ax=ax, size=3, hue="name",
                          hue_order=order, legend=False, jitter=False)  # no random jitter: same bytes every run
            ax.set(xlabel=f"{label} per test volume", ylabel="")
        fig.tight_layout()
        return save_figure(fig, out_png)


def plot_subsets(per_volume: pd.DataFrame, methods: Sequence[str], out_png: Path) -> Path:
    """Mean PSNR per contrast (left) and per field strength (right) of the brain test volumes,
    one bar per method (Table III's numbers as a picture); the error bars are the std."""
    import seaborn as sns

    df = per_volume[per_volume["method"].isin(methods)
                    & (per_volume["anatomy"].astype(str) == "brain")].assign(
        name=lambda d: d["method"].map(lambda m: METHOD_NAMES.get(m, m)),
        field=lambda d: d["field_strength"].map(lambda f: f"{float(f):g} T"))
    order = _names(methods)
    with themed():
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), squeeze=False)
        for ax, key, label in zip(axes[0], ("contrast", "field"), ("contrast", "field strength")):
            sns.barplot(data=df, x=key, y="psnr", hue="name", hue_order=order, ax=ax,
                        errorbar="sd", order=sorted(df[key].unique()), err_kws={"linewidth": 0.8})
            ax.set(xlabel=label, ylabel="PSNR (dB)")
            ax.legend_.remove() if ax.legend_ is not None else None
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=7)
        fig.tight_layout(rect=(0, 0.06 * (1 + (len(labels) - 1) // 4), 1, 1))
        return save_figure(fig, out_png)


def _benchmark(path: Path) -> dict[str, float]:
    row = pd.read_csv(path, sep="\t").iloc[-1]
    return {out: float(row[col]) for col, out in BENCHMARK_COLUMNS.items()}


def cost_table(results: str | Path, methods: Sequence[str], stages: Sequence[str],
               n_slices: Mapping[str, int]) -> pd.DataFrame:
    """One row per job kind and name: ``kind`` (train | reconstruct | evaluate | preprocess),
    ``name``, ``jobs``, ``seconds`` (summed over the jobs: a method's shards, the volumes),
    ``seconds_per_slice`` (reconstruction: over the method's ``n_slices`` test slices) and
    ``peak_rss_mb`` (the largest job's); a job without a benchmark file is left out."""
    bench = Path(results) / "benchmarks"
    rows = []

    def add(kind: str, name: str, files: list[Path], slices: int | None = None) -> None:
        if not files:
            return
        runs = [_benchmark(f) for f in files]
        seconds = sum(r["seconds"] for r in runs)
        rows.append({"kind": kind, "name": name, "jobs": len(runs), "seconds": seconds,
                     "seconds_per_slice": seconds / slices if slices else None,
                     "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)})

    add("preprocess", "all volumes", sorted((bench / "preprocess").glob("*.tsv")))
    for stage in stages:
        add("train", stage, [f for f in [bench / "train" / f"{stage}.tsv"] if f.is_file()])
    for m in methods:
        shards = [f for f in (bench / "reconstruct").glob(f"{m}_*.tsv")
                  if re.fullmatch(rf"{re.escape(m)}_\d+", f.stem)]
        add("reconstruct", m, sorted(shards), n_slices.get(m))
    for m in methods:
        add("evaluate", m, [f for f in [bench / "evaluate" / f"{m}.tsv"] if f.is_file()])
    return pd.DataFrame(rows, columns=["kind", "name", "jobs", "seconds", "seconds_per_slice",
                                       "peak_rss_mb"])


def write_cost_table(costs: pd.DataFrame, stem: Path) -> list[Path]:
    """``stem``.csv (numbers) and .md/.tex (rounded) of :func:`cost_table`."""
    from ..io import write_text_atomic

    stem = Path(stem)
    shown = costs.assign(name=costs["name"].map(lambda n: METHOD_NAMES.get(n, n)))
    shown = shown.rename(columns={"seconds": "wall s", "seconds_per_slice": "s / slice",
                                  "peak_rss_mb": "peak RSS (MB)"}).round(2)
    shown = shown.astype(object).where(shown.notna(), None)  # empty cells, not "nan"
    title = "Cost per job: wall time and peak memory (Snakemake benchmark files of this run)"
    note = ("Seconds are summed over a row's jobs (a method's shards, the volumes); s / slice is "
            "a method's reconstruction time over its test slices; peak RSS is the largest job's.")
    paths = [stem.with_suffix(s) for s in (".csv", ".md", ".tex")]
    write_text_atomic(paths[0], costs.to_csv(index=False))
    write_text_atomic(paths[1], f"### {title}\n\n" + shown.to_markdown(index=False, missingval="–") + f"\n\n{note}\n")
    write_text_atomic(paths[2], f"% {title}\n% {note}\n" + shown.to_latex(index=False, na_rep="--"))
    return paths


def plot_costs(costs: pd.DataFrame, out_png: Path) -> Path:
    """Wall time (left, log scale) and peak memory (right) of each training stage and each
    method's reconstruction."""
    import seaborn as sns

    df = costs[costs["kind"].isin(["train", "reconstruct"])].assign(
        job=lambda d: d["kind"] + ": " + d["name"].map(lambda n: METHOD_NAMES.get(n, n)))
    with themed():
        fig, axes = plt.subplots(1, 2, figsize=(10, 0.3 * max(len(df), 1) + 1.5), squeeze=False)
        for ax, col, label in zip(axes[0], ("seconds", "peak_rss_mb"),
                                  ("wall time (s)", "peak RSS (MB)")):
            sns.barplot(data=df, x=col, y="job", hue="kind", ax=ax, dodge=False, legend=ax is axes[0, 0])
            ax.set(xlabel=label, ylabel="")
        if axes[0, 0].legend_ is not None:
            sns.move_legend(axes[0, 0], "lower right")
        if len(df):
            axes[0, 0].set_xscale("log")
        fig.tight_layout()
        return save_figure(fig, out_png)


def plot_quality_vs_time(costs: pd.DataFrame, psnr: Mapping[str, float], out_png: Path) -> Path:
    """Test PSNR against reconstruction seconds per slice (log scale), one point per method."""
    import seaborn as sns

    rec = costs[(costs["kind"] == "reconstruct") & costs["name"].isin(list(psnr))]
    df = pd.DataFrame({"method": [METHOD_NAMES.get(m, m) for m in rec["name"]],
                       "seconds_per_slice": rec["seconds_per_slice"].astype(float).to_numpy(),
                       "psnr": [psnr[m] for m in rec["name"]]})
    with themed():
        fig, ax = plt.subplots(figsize=(6, 4))
        sns.scatterplot(data=df, x="seconds_per_slice", y="psnr", hue="method", ax=ax, s=50,
                        legend=False)
        for _, r in df.iterrows():
            ax.annotate(r["method"], (r["seconds_per_slice"], r["psnr"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
        if len(df) and (df["seconds_per_slice"] > 0).all():
            ax.set_xscale("log")
        ax.set(xlabel="reconstruction seconds per test slice", ylabel="test PSNR (dB)")
        fig.tight_layout()
        return save_figure(fig, out_png)


#: the share of a stage's logged steps that the moving average spans, and that the loss table's
#: "first" and "last" columns average over
CURVE_FRACTION = 0.1
#: the moving average's smallest window (steps)
MIN_CURVE_WINDOW = 5


def read_training_log(results: str | Path, stage: str) -> tuple[pd.DataFrame | None, str | None]:
    """``models/<stage>/log.csv`` as ``step`` and ``loss`` (and a VAE stage's ``l1`` and
    ``gan_weight``) sorted by step (finite losses; the last row of a repeated step), or
    ``(None, reason)`` when there is nothing to plot."""
    path = Path(results) / "models" / stage / "log.csv"
    if not path.is_file():
        why = ("final/ is there: its log was not copied or pulled with it"
               if (path.parent / "final").is_dir() else "stage not trained in this run")
        return None, f"no log.csv in models/{stage}/ ({why})"
    try:
        df = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as err:
        return None, f"models/{stage}/log.csv unreadable: {type(err).__name__}"
    if not {"step", "loss"} <= set(df.columns):
        return None, f"models/{stage}/log.csv has no step and loss columns"
    # the VAE stages' L1 error (beside a "rec" column) and GAN weight are drawn with the loss
    extra = [c for c in ("l1", "gan_weight") if c in df.columns and "rec" in df.columns]
    df = pd.DataFrame({c: pd.to_numeric(df[c], errors="coerce") for c in ("step", "loss", *extra)})
    df = df[df["step"].notna() & df["loss"].map(math.isfinite)]
    df = df.drop_duplicates("step", keep="last").sort_values("step", kind="stable")
    if df.empty:
        return None, f"models/{stage}/log.csv has no finite loss"
    return df.reset_index(drop=True), None


def loss_summary(logs: Mapping[str, tuple[pd.DataFrame | None, str | None]]) -> pd.DataFrame:
    """One row per stage: ``steps`` (logged), ``first_10pct`` and ``last_10pct`` (mean loss over
    the first and last ``CURVE_FRACTION`` of the logged steps, at least one step each),
    ``last_over_first`` (their ratio), ``fell`` (last < first) and ``missing`` (why a stage has
    no numbers)."""
    rows = []
    for stage, (df, reason) in logs.items():
        row = {"stage": stage, "steps": 0, "first_10pct": None, "last_10pct": None,
               "last_over_first": None, "fell": None, "missing": reason}
        if df is not None:
            k = max(1, math.ceil(CURVE_FRACTION * len(df)))
            first, last = float(df["loss"].iloc[:k].mean()), float(df["loss"].iloc[-k:].mean())
            row.update(steps=len(df), first_10pct=first, last_10pct=last, fell=last < first,
                       last_over_first=last / first if first != 0 else None)
        rows.append(row)
    return pd.DataFrame(rows, columns=["stage", "steps", "first_10pct", "last_10pct",
                                       "last_over_first", "fell", "missing"])


def loss_markdown(summary: pd.DataFrame) -> str:
    """:func:`loss_summary` as a markdown table (4 significant digits; ``–`` where a stage has
    no log), with a note saying what its columns are."""
    shown = summary.rename(columns={"first_10pct": "mean loss, first 10%",
                                    "last_10pct": "mean loss, last 10%",
                                    "last_over_first": "last / first", "fell": "loss fell",
                                    "missing": "no curve because"})
    shown = shown.astype(object).where(shown.notna(), None)  # empty cells, not "nan"
    note = ("Mean of the logged loss over each stage's first and last 10% of steps (at least one "
            "step each); last / first < 1: the loss fell over training.")
    return shown.to_markdown(index=False, floatfmt=".4g", missingval="–") + f"\n\n{note}\n"


def training_curves(results: str | Path, stages: Sequence[str]) -> tuple[plt.Figure, pd.DataFrame]:
    """One panel per stage, titled by it: the raw loss of ``models/<stage>/log.csv`` (faint) and
    its centred moving average over ``CURVE_FRACTION`` of the steps (at least
    ``MIN_CURVE_WINDOW``; bold) against the step, on a log axis when the loss spans more than 10x;
    a stage without a usable log gets a panel that says why. Returns the figure (the caller saves
    it, e.g. with :func:`ldpm.report.figures.save_figure`) and :func:`loss_summary` of the logs."""
    stages = list(dict.fromkeys(stages))
    logs = {s: read_training_log(results, s) for s in stages}
    n = max(1, len(stages))
    cols = min(n, 3 if n <= 6 else 4)
    rows = -(-n // cols)
    with themed():
        fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.7 * rows), squeeze=False)
        for ax in axes.ravel()[len(stages):]:
            fig.delaxes(ax)
        for ax, (stage, (df, reason)) in zip(axes.ravel(), logs.items()):
            ax.set_title(stage, fontsize=9)
            if df is None:
                ax.text(0.5, 0.5, reason.replace(" (", "\n("), ha="center", va="center",
                        fontsize=7, wrap=True, transform=ax.transAxes)
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            window = max(MIN_CURVE_WINDOW, round(CURVE_FRACTION * len(df)))
            smooth = df["loss"].rolling(window, center=True, min_periods=1).mean()
            ax.plot(df["step"], df["loss"], lw=0.6, alpha=0.3, color="C0", label="loss")
            ax.plot(df["step"], smooth, lw=1.6, color="C0",
                    label=f"moving average ({window} steps)")
            if "l1" in df:  # a VAE stage: its L1 error (right axis), which a GAN must not raise
                right = ax.twinx()
                right.plot(df["step"], df["l1"].rolling(window, center=True, min_periods=1).mean(),
                           lw=1.2, color="C1")
                right.set_ylabel("L1 per element (moving average)", fontsize=7, color="C1")
                right.tick_params(labelsize=7, colors="C1")
                right.grid(False)
            if "gan_weight" in df and (df["gan_weight"] > 0).any():
                ax.axvline(float(df.loc[df["gan_weight"] > 0, "step"].iloc[0]), ls="--",
                           color="grey", lw=0.8, label="GAN on")
            low, high = float(df["loss"].min()), float(df["loss"].max())
            if low > 0 and high > 10 * low:
                ax.set_yscale("log")
            ax.set_xlabel("step", fontsize=8)
            ax.set_ylabel("loss", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=6)
        fig.tight_layout()
    return fig, loss_summary(logs)


def write_training_curves(results: str | Path, stages: Sequence[str],
                          name: str) -> tuple[Path, pd.DataFrame]:
    """``results/figures/<name>.{png,pdf}``: :func:`training_curves` of ``stages``, and its
    :func:`loss_summary`."""
    fig, losses = training_curves(results, stages)
    return save_figure(fig, Path(results) / "figures" / f"{name}.png"), losses
