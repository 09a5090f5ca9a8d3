"""DiffCode's Table 1 and Table 2 (a)(b) from the evaluate step's files.

Every number in our columns is read from ``results/diffcode/metrics/<method>.json`` (written by
:func:`ldpm.studies.diffcode.evaluate.evaluate_diffcode_method`); a cell that has no value is
``n/a`` with its reason (no data configured, variant not run, ...). The DiffCode paper's published values
(``config/paper_values_diffcode.yaml``) appear only in separate ``(paper)`` columns and, for
PSNR and SSIM, ``Δ`` = ours − paper; RMSE has no Δ (the paper's RMSE is in each dataset's own
units). Cells are rendered by :func:`ldpm.report.tables.display_table` (best in bold, second
underlined, n/a footnotes), one block per task (Table 1) or per sub-table (Table 2); the CSV
holds the whole numeric table.

:func:`make_curves` draws the training loss of every stage the methods use
(``models/diffcode_<stage>/log.csv``) into ``figures/diffcode_curves.{png,pdf}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from ...errors import LdpmInputError
from ...io import write_text_atomic
from ...report.paper import citation, load_paper_values, paper_table
from ...report.plots import write_training_curves
from ...report.tables import display_table
from .config import METHOD_NAMES, TABLE2_VARIANTS, stages_of
from .degradations import task_title
from .evaluate import METRICS

PAPER_TABLES = ("table1", "table2a", "table2b")
TITLES = {"psnr": ("PSNR ↑", True, 2), "ssim": ("SSIM ↑", True, 4), "rmse": ("RMSE ↓", False, 4)}
#: metrics whose paper value is comparable with ours (same definition and units): Δ is shown
DELTA_METRICS = ("psnr", "ssim")
#: Table 2's rows, in the paper's order
TABLE2A = ("v1", "v2", "v3", "diffcode")
TABLE2B = ("top3", "top2", "single", "diffcode")


def load_metrics(results: str | Path, methods: Sequence[str]) -> dict[str, dict | None]:
    """method -> its summary JSON, or None when the method was not run (not configured)."""
    out = {}
    for m in methods:
        path = Path(results) / "diffcode" / "metrics" / f"{m}.json"
        out[m] = json.loads(path.read_text()) if path.is_file() else None
    return out


def _config_of(summary: Mapping) -> str:
    v = TABLE2_VARIANTS.get(summary["method"])
    if v is None:
        return ""
    cb = {"bank": "CB ✓", "single": "single codebook", None: "CB ✗"}[v["codebook"]]
    ld = {"diffusion": "LD ✓", "direct": "LD ✗", None: "LD ✗"}[v["prior"]]
    return f"{cb}, {ld}, TARS {'✓' if v['tars'] else '✗'}"


def numeric_rows(summaries: Mapping[str, dict | None], blocks: Sequence[str],
                 missing_reason: Mapping[str, str]) -> pd.DataFrame:
    """One row per method: for each block (a task or ``average``) and metric: value, std, n/a
    reason and number of volumes, as ``<block>_<metric>[_std|_na|_n]``."""
    rows = []
    for method, s in summaries.items():
        row: dict = {"method": method, "name": METHOD_NAMES.get(method, method)}
        for block in blocks:
            entry = None if s is None else (s["average"] if block == "average" else s["tasks"].get(block))
            for m in METRICS:
                key = f"{block}_{m}"
                if s is None:
                    rec, n = {"value": None, "std": None, "reason": missing_reason[method]}, None
                elif entry is None:
                    rec, n = {"value": None, "std": None, "reason": f"{block} is not a configured task"}, None
                elif block == "average":
                    rec, n = entry[m], len(entry[m].get("tasks", []))
                else:
                    rec, n = entry["metrics"][m], entry.get("n_volumes")
                row[key], row[f"{key}_std"], row[f"{key}_na"] = rec["value"], rec.get("std"), rec["reason"]
                row[f"{key}_n"] = n
        rows.append(row)
    return pd.DataFrame(rows)


def add_paper(numeric: pd.DataFrame, paper: Mapping[str, Mapping[str, float]],
              blocks: Sequence[str]) -> pd.DataFrame:
    """``<key>_paper`` beside every key the paper has a value for; ``<key>_delta`` for PSNR/SSIM."""
    out = numeric.copy()
    for block in blocks:
        for m in METRICS:
            key = f"{block}_{m}"
            vals = [paper.get(meth, {}).get(key) for meth in out["method"]]
            if all(v is None for v in vals):
                continue
            out[f"{key}_paper"] = vals
            if m in DELTA_METRICS:
                out[f"{key}_delta"] = [None if p is None or pd.isna(o) else float(o) - float(p)
                                       for o, p in zip(pd.to_numeric(out[key], errors="coerce"), vals)]
    return out


def _spec(block: str) -> list[tuple]:
    return [(f"{block}_{m}", *TITLES[m]) for m in METRICS]


def write_blocks(numeric: pd.DataFrame, blocks: Sequence[tuple[str, str, pd.DataFrame]], stem: Path,
                 title: str, note: str, paper_note: str) -> list[Path]:
    """``stem``.csv (the whole numeric table), .md and .tex: one rendered block per
    ``(heading, block key, rows)``, each by :func:`display_table` with its n/a footnotes."""
    stem = Path(stem)
    csv, md, tex = (stem.with_suffix(s) for s in (".csv", ".md", ".tex"))
    write_text_atomic(csv, numeric.to_csv(index=False))
    md_parts, tex_parts, md_notes, tex_notes = [f"### {title}"], [], [], []
    for heading, block, rows in blocks:
        shown, notes = display_table(rows.reset_index(drop=True), _spec(block), "markdown")
        md_parts += [f"#### {heading}", shown.to_markdown(index=False, disable_numparse=True)]
        md_notes += [f"{heading}, {n}" for n in notes]
        shown_tex, _ = display_table(rows.reset_index(drop=True), _spec(block), "latex")
        body = shown_tex.to_latex(index=False, escape=False,
                                  column_format="l" + "c" * (shown_tex.shape[1] - 1))
        for a, b in (("±", r"$\pm$"), ("↑", r"$\uparrow$"), ("↓", r"$\downarrow$"), ("Δ", r"$\Delta$"),
                     ("–", "--"), ("✓", r"$\checkmark$"), ("✗", r"$\times$")):
            body = body.replace(a, b)
        tex_parts.append(f"% {heading}\n{body}")
        tex_notes += [f"{heading}, {n}" for n in notes]
    legend = f"{note} Our columns: **best**, _second best_. {paper_note}"
    text = "\n\n".join(md_parts) + f"\n\n{legend}\n" + "".join(f"\n- {n}" for n in md_notes)
    write_text_atomic(md, text + ("\n" if md_notes else ""))
    head = "".join(f"% {line}\n" for line in [title, f"{note} Our columns: best in bold, second "
                                               f"best underlined. {paper_note}", *tex_notes])
    write_text_atomic(tex, head + "\n".join(tex_parts))
    return [csv, md, tex]


def _paper_note(paper: Mapping, table: str) -> str:
    block = paper[table]
    return (f"(paper) columns: the published values of "
            f"{citation(paper.get('reference', 'diffcode'), block.get('caption', table))}, typed into "
            "config/paper_values_diffcode.yaml; the paper's setting: IXI MRI SR 4x, AAPM LDCT, a "
            "clinical PET set, full-size models; its RMSE is in each dataset's units (no Δ). "
            "Δ = ours − paper.")


def _routing_note(summary: Mapping | None) -> str:
    """`` (routing accuracy on the test slices: 97.5 %: mri_sr 100.0 %, ...)``, or ``""``."""
    acc = (summary or {}).get("routing_accuracy")
    if not acc:
        return ""
    per = ", ".join(f"{t} {v:.1%}" for t, v in acc["per_task"].items())
    return f" (routing accuracy on the test slices: {acc['overall']:.1%}; {per})"


def _missing_reasons(methods: Sequence[str], summaries: Mapping[str, dict | None]) -> dict[str, str]:
    return {m: ("not run: add it to diffcode.variants" if m in TABLE2_VARIANTS else
                "not run: add it to diffcode.baselines") for m in methods if summaries.get(m) is None}


def make_table1(results: str | Path, methods: Sequence[str], tasks: Sequence[str],
                levels: Mapping, paper_values: str | Path) -> list[Path]:
    """DiffCode Table 1: per task and on average, PSNR/SSIM/RMSE of the input, DiffCode and
    the all-in-one comparison restorers (rows: the configured ones of ``methods``)."""
    results = Path(results)
    rows = [m for m in methods if m not in TABLE2_VARIANTS or m == "diffcode"]
    summaries = load_metrics(results, rows)
    blocks = [*tasks, "average"]
    numeric = numeric_rows(summaries, blocks, _missing_reasons(rows, summaries))
    paper = load_paper_values(paper_values, PAPER_TABLES)
    numeric = add_paper(numeric, paper_table(paper, "table1"), blocks)
    heads = [(task_title(t, levels), t) for t in tasks] + [("Average over the tasks with data", "average")]
    note = ("Per task: mean ± std over its test volumes (fastMRI per-volume PSNR/SSIM; RMSE in "
            "units of the volume's max). Average: mean of the task means this run computed "
            "(the CSV's `average_*_n` says how many). All methods are trained all-in-one on the "
            "same tasks and see the LQ image only; DiffCode's codebook is the one TARS's task "
            "classifier picks" + _routing_note(summaries.get("diffcode")) + "; the oracle row "
            "is given the true task id.")
    return write_blocks(numeric, [(h, b, numeric) for h, b in heads], results / "tables" / "diffcode_table1",
                        "DiffCode Table 1: all-in-one restoration, per task (test set)", note,
                        _paper_note(paper, "table1"))


def make_table2(results: str | Path, paper_values: str | Path) -> list[Path]:
    """DiffCode Table 2: (a) component analysis V1/V2/V3/DiffCode, (b) single codebook vs bank
    and TARS top-k; each row's average over the tasks with data."""
    results = Path(results)
    methods = list(dict.fromkeys([*TABLE2A, *TABLE2B]))
    summaries = load_metrics(results, methods)
    numeric = numeric_rows(summaries, ["average"], _missing_reasons(methods, summaries))
    numeric.insert(2, "configuration", [_config_of({"method": m}) for m in numeric["method"]])
    paper = load_paper_values(paper_values, PAPER_TABLES)
    a = add_paper(numeric.set_index("method").loc[list(TABLE2A)].reset_index(), paper_table(paper, "table2a"),
                  ["average"])
    b = add_paper(numeric.set_index("method").loc[list(TABLE2B)].reset_index(), paper_table(paper, "table2b"),
                  ["average"])
    a["name"] = [f"{n} ({c})" for n, c in zip(a["name"], a["configuration"])]
    b["name"] = ["DiffCode (bank, top-1)" if m == "diffcode" else n for m, n in zip(b["method"], b["name"])]
    a.insert(0, "part", "a")
    b.insert(0, "part", "b")
    note = ("Average over the tasks with data of each task's mean over its test volumes (as Table 1). "
            "(a) CB = codebook bank, LD = latent diffusion retrieval (V3 retrieves with E_lq alone), "
            "TARS top-1. (b) rows: bank with top-3 and top-2 experts, one shared codebook with top-1, "
            "the bank with top-1 (DiffCode); DiffCode, top-2 and top-3 share stages I-II.")
    paper_note = (_paper_note(paper, "table2a") + f" (b): line {paper['table2b'].get('line', '?')}; "
                  "its check marks are lost in the text, the rows are read as in the YAML's comment.")
    return write_blocks(pd.concat([a, b], ignore_index=True),
                        [("(a) Component analysis", "average", a), ("(b) Codebook and TARS top-k", "average", b)],
                        results / "tables" / "diffcode_table2",
                        "DiffCode Table 2: ablations (average over the tasks, test set)", note, paper_note)


def check_methods(methods: Sequence[str]) -> None:
    unknown = [m for m in methods if m not in METHOD_NAMES]
    if unknown:
        raise LdpmInputError(f"diffcode methods {unknown}", "unknown", f"use {sorted(METHOD_NAMES)}")


def curve_stages(methods: Sequence[str]) -> list[str]:
    """The training folders (``diffcode_<stage>``) of every stage ``methods`` use, sorted as the
    workflow lists them (:func:`ldpm.studies.diffcode.config.stages_of`)."""
    return [f"diffcode_{s}" for s in stages_of(methods)]


def make_curves(results: str | Path, methods: Sequence[str]) -> tuple[Path, pd.DataFrame]:
    """``figures/diffcode_curves.{png,pdf}``: each stage's training loss, and the mean loss over
    its first and last 10% of steps (:func:`ldpm.report.plots.training_curves`)."""
    return write_training_curves(results, curve_stages(methods), "diffcode_curves")
