"""Tables from the metrics files: CSV (numbers + n/a reasons), Markdown and LaTeX.

Every cell comes from ``results/metrics/<method>/summary.json``, written by the evaluate
step; a metric that could not be computed is shown as ``n/a`` with its reason underneath.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..io import write_text_atomic

METHOD_NAMES = {
    "zero_filled": "Zero-Filled",
    "unet": "U-Net",
    "varnet": "E2E-VarNet",
    "swinmr": "SwinMR",
    "score_mri": "Score-MRI",
    "ldpm": "LDPM (ours)",
}
#: (key in summary.json, column title, higher is better, decimals)
TABLE1_METRICS = [("psnr", "PSNR ↑", True, 2), ("ssim", "SSIM ↑", True, 4), ("nmse", "NMSE ↓", False, 4),
                  ("lpips", "LPIPS ↓", False, 4), ("rfid", "rFID ↓", False, 2), ("kid", "KID ↓", False, 4)]


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
    return pd.DataFrame(rows)


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
    return pd.DataFrame(out)


def _rank_marks(values: pd.Series, higher_better: bool) -> dict[int, str]:
    """Index -> mark for best (``best``) and second best (``second``) of a column."""
    v = pd.to_numeric(values, errors="coerce").dropna()
    if len(v) < 2:  # nothing to compare against
        return {}
    order = v.sort_values(ascending=not higher_better).index.tolist()
    marks = {order[0]: "best"}
    if len(order) > 1:
        marks[order[1]] = "second"
    return marks


def _cell(value, std, decimals: int) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    text = f"{value:.{decimals}f}"
    if std is not None and not (isinstance(std, float) and np.isnan(std)):
        text += f" ± {std:.{decimals}f}"
    return text


def display_table(numeric: pd.DataFrame, metrics: Sequence[tuple] = TABLE1_METRICS,
                  fmt: str = "markdown") -> tuple[pd.DataFrame, list[str]]:
    """Formatted cells (best in bold, second underlined) and footnotes for n/a cells."""
    bold, under = ("**{}**", "_{}_") if fmt == "markdown" else (r"\textbf{{{}}}", r"\underline{{{}}}")
    shown = pd.DataFrame({"Method": [METHOD_NAMES.get(m, m) for m in numeric["method"]]})
    notes: list[str] = []
    for key, title, higher, dec in metrics:
        marks = _rank_marks(numeric[key], higher)
        cells = []
        for i, row in numeric.iterrows():
            text = _cell(row[key], row[f"{key}_std"], dec)
            if text == "n/a":
                note = f"{title.split()[0]} n/a for {METHOD_NAMES.get(row['method'], row['method'])}: {row[f'{key}_na']}"
                notes.append(note)
            elif marks.get(i) == "best":
                text = bold.format(text)
            elif marks.get(i) == "second":
                text = under.format(text)
            cells.append(text)
        shown[title] = cells
    return shown, list(dict.fromkeys(notes))


def write_table(numeric: pd.DataFrame, stem: Path, title: str,
                metrics: Sequence[tuple] = TABLE1_METRICS) -> list[Path]:
    """Write ``stem``.csv (numbers), .md and .tex (formatted, with n/a footnotes)."""
    stem = Path(stem)
    csv, md, tex = (stem.with_suffix(s) for s in (".csv", ".md", ".tex"))
    write_text_atomic(csv, numeric.to_csv(index=False))
    shown, notes = display_table(numeric, metrics, "markdown")
    md_text = f"### {title}\n\n" + shown.to_markdown(index=False)
    md_text += "\n\nMean ± std over test volumes. **Best**, _second best_.\n"
    md_text += "".join(f"\n- {n}" for n in notes) + ("\n" if notes else "")
    write_text_atomic(md, md_text)
    shown_tex, _ = display_table(numeric, metrics, "latex")
    body = shown_tex.to_latex(index=False, escape=False, column_format="l" + "c" * len(metrics))
    body = body.replace("±", r"$\pm$").replace("↑", r"$\uparrow$").replace("↓", r"$\downarrow$")
    foot = "".join(f"% {n}\n" for n in notes)
    write_text_atomic(tex, f"% {title}\n{foot}{body}")
    return [csv, md, tex]
