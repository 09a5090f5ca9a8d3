"""Tables from the metrics files: CSV (numbers + n/a reasons), Markdown and LaTeX.

Every number in our columns comes from the evaluate step's files:
``results/metrics/<method>/summary.json`` (Tables I, II) or ``per_volume.csv`` (Table III).
A value that could not be computed is shown as ``n/a`` with its reason in a footnote.
The paper's published values (``config/paper_values.yaml``) may be added *beside* ours as
separate ``(paper)`` and ``Δ`` (ours − paper) columns; they never enter our columns or the
best/second-best marks.

A *numeric table* is a DataFrame with one row per method (column ``method``) and, for each
column spec ``(key, title, higher_is_better, decimals)``: ``key`` (value or None), ``key_std``,
``key_na`` (why there is no value, else None) and optionally ``key_n`` (how many volumes),
``key_paper`` and ``key_delta``. :func:`write_table` writes it as CSV (the numbers, exactly)
and renders it as Markdown and LaTeX.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..baselines import baselines
from ..io import write_text_atomic
from ..methods.graph import ABLATIONS

#: each method's row name (the trained baselines' titles come from their modules)
METHOD_NAMES = {
    "zero_filled": "Zero-Filled",
    **{name: declared.title for name, declared in baselines().items()},
    "unet_official": "U-Net (fastMRI weights, multicoil)",
    "varnet_official": "E2E-VarNet (fastMRI weights, multicoil)",
    "ldpm": "LDPM (ours)",
    "ldpm_wo_mrvae": "LDPM (w/o MR-VAE)",
    "ldpm_wo_skm": "LDPM (w/o SkM)",
    "ldpm_wo_dss": "LDPM (w/o DSS)",
    "sketcher_only": "Sketcher only (condition c)",
}
TABLE2_ROWS = (*ABLATIONS, "ldpm")

#: (key in summary.json, column title, higher is better, decimals)
TABLE1_METRICS = [("psnr", "PSNR ↑", True, 2), ("ssim", "SSIM ↑", True, 4), ("nmse", "NMSE ↓", False, 4),
                  ("lpips", "LPIPS ↓", False, 4), ("rfid", "rFID ↓", False, 2), ("kid", "KID ↓", False, 4)]
TABLE2_METRICS = TABLE1_METRICS[:2]
#: Fig. 3's set metrics (MR-VAE vs SD/untuned VAE), as in the paper's figure.
VAE_METRICS = [TABLE1_METRICS[0], TABLE1_METRICS[1], TABLE1_METRICS[4]]


def _brain(df: pd.DataFrame) -> pd.Series:
    return df["anatomy"].astype(str).str.lower() != "knee"


def _field(df: pd.DataFrame) -> pd.Series:
    # nominal field strength as the data reader rounds it (ldpm.data.fastmri.round_field_strength)
    return np.where(pd.to_numeric(df["field_strength"], errors="coerce") < 2.2, 1.5, 3.0)


#: Table III subsets of the brain test set: (key, column title, what an empty subset is called,
#: row filter on per_volume.csv).
TABLE3_SUBSETS: list[tuple[str, str, str, Callable[[pd.DataFrame], pd.Series]]] = [
    *[(c, c, f"{c} brain", (lambda df, c=c: _brain(df) & (df["contrast"].astype(str) == c)))
      for c in ("FLAIR", "T1", "T1PRE", "T1POST", "T2")],
    ("1.5T", "1.5 T", "1.5 T brain", lambda df: _brain(df) & (_field(df) == 1.5)),
    ("3T", "3 T", "3 T brain", lambda df: _brain(df) & (_field(df) == 3.0)),
]
#: Table III's last column: every volume of the out-of-distribution set, which is scored apart
#: (``metrics/<method>/ood/per_volume.csv``) and never trained or tuned on; the paper's is
#: fastMRI knee
OOD_SUBSET = ("ood", "OOD", "out-of-distribution", lambda df: pd.Series(True, index=df.index))
NO_OOD = "no out-of-distribution set in this run (set data.ood_root, or embedded.ood)"
TABLE3_METRICS = [(key, title, True, 2) for key, title, *_ in (*TABLE3_SUBSETS, OOD_SUBSET)]


def ood_title(per_volume: pd.DataFrame | None) -> str:
    """The OOD column's title, saying what the set is: ``OOD (knee PD, PDFS)`` from the
    anatomy and contrasts of its volumes; ``OOD`` without a set."""
    if per_volume is None or per_volume.empty:
        return "OOD"
    kinds = sorted(set(per_volume["anatomy"].astype(str)))
    contrasts = sorted(set(per_volume["contrast"].astype(str)))
    return f"OOD ({'/'.join(kinds)} {', '.join(contrasts)})"


def method_name(method: str) -> str:
    return METHOD_NAMES.get(method, method)


def table2_methods(methods: Sequence[str]) -> list[str]:
    """Table II's rows: the configured ablations, then LDPM (the paper's order)."""
    return [m for m in TABLE2_ROWS if m in methods]


# ------------------------------------------------------------------------------ numbers

def load_summary(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def metrics_long(summaries: Sequence[dict]) -> pd.DataFrame:
    """One row per (method, metric): value, std, reason (None when computed)."""
    rows = []
    for s in summaries:
        for key, m in s["metrics"].items():
            rows.append({"method": s["method"], "metric": key, "value": m.get("value"),
                         "std": m.get("std"), "reason": m.get("reason"),
                         "n_volumes": s.get("n_volumes"), "n_slices": s.get("n_slices")})
    return pd.DataFrame(rows, columns=["method", "metric", "value", "std", "reason", "n_volumes", "n_slices"])


def numeric_table(long: pd.DataFrame, metrics: Sequence[tuple] = TABLE1_METRICS) -> pd.DataFrame:
    """Wide numeric table: per method, ``<metric>``, ``<metric>_std`` and ``<metric>_na`` (reason)."""
    out = []
    for method, g in long.groupby("method", sort=False):
        row = {"method": method}
        by = g.set_index("metric")
        for key, *_ in metrics:
            rec = by.loc[key] if key in by.index else None
            row[key] = None if rec is None else rec["value"]
            row[f"{key}_std"] = None if rec is None else rec["std"]
            row[f"{key}_na"] = "not computed by this run" if rec is None else rec["reason"]
        out.append(row)
    return pd.DataFrame(out, columns=["method", *[f"{k}{s}" for k, *_ in metrics
                                                  for s in ("", "_std", "_na")]])


def subset_table(per_volume: pd.DataFrame, methods: Sequence[str],
                 subsets=TABLE3_SUBSETS, metric: str = "psnr") -> pd.DataFrame:
    """Table III's numbers: per method and subset, mean (and std, n) of ``metric`` over the
    subset's volumes in ``per_volume`` (the evaluate step's per_volume.csv rows, all methods).

    An empty subset has value None and the reason ``no <subset> volumes in this test set``.
    """
    rows = []
    for method in methods:
        df = per_volume[per_volume["method"] == method]
        row: dict = {"method": method}
        for key, _title, name, select in subsets:
            vals = pd.to_numeric(df.loc[select(df), metric], errors="coerce").dropna().to_numpy(float) \
                if len(df) else np.zeros(0)
            row[key] = float(vals.mean()) if len(vals) else None
            row[f"{key}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else None
            row[f"{key}_n"] = int(len(vals))
            row[f"{key}_na"] = None if len(vals) else (
                f"no {name} volumes in this test set" if len(df) else f"no per-volume metrics for {method}")
        rows.append(row)
    return pd.DataFrame(rows, columns=["method", *[f"{k}{s}" for k, *_ in subsets
                                                   for s in ("", "_std", "_n", "_na")]])


def add_paper_columns(numeric: pd.DataFrame, paper: Mapping[str, Mapping[str, float]],
                      metrics: Sequence[tuple]) -> pd.DataFrame:
    """Add ``<key>_paper`` (the paper's value, None where it has none) and ``<key>_delta``
    (ours − paper, None unless both exist) after each metric's own columns."""
    out = numeric.copy()
    for key, *_ in metrics:
        paper_vals = [paper.get(m, {}).get(key) for m in out["method"]]
        ours = pd.to_numeric(out[key], errors="coerce")
        delta = [None if p is None or pd.isna(o) else float(o) - float(p) for o, p in zip(ours, paper_vals)]
        out[f"{key}_paper"] = [None if p is None else float(p) for p in paper_vals]
        out[f"{key}_delta"] = delta
    order = ["method"]
    for key, *_ in metrics:
        order += [c for c in out.columns if c == key or (c.startswith(f"{key}_") and
                  c[len(key) + 1:] in ("std", "n", "na", "paper", "delta"))]
    return out[order + [c for c in out.columns if c not in order]]


# ------------------------------------------------------------------------------ rendering

def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and np.isnan(x))


def _rank_marks(values: pd.Series, higher_better: bool) -> dict[int, str]:
    """Index -> mark for best (``best``) and second best (``second``) of a column; tied values
    share a mark, and a tie for best leaves no second."""
    v = pd.to_numeric(values, errors="coerce").dropna()
    if len(v) < 2:  # nothing to compare against
        return {}
    levels = sorted(v.unique(), reverse=higher_better)  # ties share a mark
    marks = {i: "best" for i in v.index[v == levels[0]]}
    if len(marks) == 1 and len(levels) > 1:
        marks.update({i: "second" for i in v.index[v == levels[1]]})
    return marks


def _cell(value, std, decimals: int) -> str:
    if _missing(value):
        return "n/a"
    text = f"{value:.{decimals}f}"
    if not _missing(std):
        text += f" ± {std:.{decimals}f}"
    return text


def _short(title: str) -> str:
    return title.replace(" ↑", "").replace(" ↓", "")


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("#", r"\#"), ("_", r"\_"),
                 ("$", r"\$")):
        text = text.replace(a, b)
    return text


def display_table(numeric: pd.DataFrame, metrics: Sequence[tuple] = TABLE1_METRICS,
                  fmt: str = "markdown", show_std: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """Formatted cells and footnotes.

    Our columns: mean (± std), best in bold, second underlined, ``n/a`` + a footnote with the
    reason. Where the table has ``<key>_paper`` columns: ``<title> (paper)`` (the paper's value
    as printed, 4 decimals; ``–`` if it has none) and, where it has ``<key>_delta``,
    ``Δ <title>`` (ours − paper).
    """
    bold, under = ("**{}**", "_{}_") if fmt == "markdown" else (r"\textbf{{{}}}", r"\underline{{{}}}")
    names = (list(numeric["name"]) if "name" in numeric.columns
             else [method_name(m) for m in numeric["method"]])
    name_of = dict(zip(numeric["method"], names))
    shown = pd.DataFrame({"Method": [_latex_escape(n) for n in names] if fmt == "latex" else names})
    reasons: dict[tuple[str, str], list[str]] = {}
    for key, title, higher, dec in metrics:
        marks = _rank_marks(numeric[key], higher)
        cells = []
        for i, row in numeric.iterrows():
            text = _cell(row[key], row.get(f"{key}_std") if show_std else None, dec)
            if text == "n/a":
                reason = row.get(f"{key}_na") or "not computed"
                reasons.setdefault((_short(title), reason), []).append(name_of[row["method"]])
            elif marks.get(i) == "best":
                text = bold.format(text)
            elif marks.get(i) == "second":
                text = under.format(text)
            cells.append(text)
        shown[title] = cells
        if f"{key}_paper" in numeric.columns:
            shown[f"{title} (paper)"] = ["–" if _missing(p) else f"{p:.4f}" for p in numeric[f"{key}_paper"]]
        if f"{key}_paper" in numeric.columns and f"{key}_delta" in numeric.columns:
            shown[f"Δ {_short(title)}"] = [
                ("–" if _missing(p) else "n/a") if _missing(d) else f"{d:+.{dec}f}"
                for d, p in zip(numeric[f"{key}_delta"], numeric[f"{key}_paper"])]
    notes = []
    for (col, reason), who in reasons.items():
        who_text = "all methods" if len(who) == len(numeric) and len(who) > 1 else ", ".join(who)
        notes.append(f"{col} ({who_text}): n/a: {reason}")
    return shown, notes


def write_table(numeric: pd.DataFrame, stem: Path, title: str,
                metrics: Sequence[tuple] = TABLE1_METRICS, *, show_std: bool = True,
                note: str = "Mean ± std over test volumes.",
                paper_note: str | None = None) -> list[Path]:
    """Write ``stem``.csv (numbers), .md and .tex (formatted, with n/a footnotes)."""
    stem = Path(stem)
    csv, md, tex = (stem.with_suffix(s) for s in (".csv", ".md", ".tex"))
    write_text_atomic(csv, numeric.to_csv(index=False))
    legend = f"{note} Our columns: **best**, _second best_."
    plain = f"{note} Our columns: best in bold, second best underlined."
    if paper_note:
        legend, plain = f"{legend} {paper_note}", f"{plain} {paper_note}"
    shown, notes = display_table(numeric, metrics, "markdown", show_std)
    md_text = f"### {title}\n\n" + shown.to_markdown(index=False, disable_numparse=True)
    md_text += f"\n\n{legend}\n" + "".join(f"\n- {n}" for n in notes) + ("\n" if notes else "")
    write_text_atomic(md, md_text)
    shown_tex, _ = display_table(numeric, metrics, "latex", show_std)
    body = shown_tex.to_latex(index=False, escape=False, column_format="l" + "c" * (shown_tex.shape[1] - 1))
    for a, b in (("±", r"$\pm$"), ("↑", r"$\uparrow$"), ("↓", r"$\downarrow$"), ("Δ", r"$\Delta$"),
                 ("–", "--")):
        body = body.replace(a, b)
    head = "".join(f"% {line}\n" for line in [title, plain, *notes])
    write_text_atomic(tex, head + body)
    return [csv, md, tex]
