"""The paper's published values (``config/paper_values.yaml``): read, checked, never computed.

File layout::

    paper: <citation>
    reference: <key of config/references.yaml>
    table1|table2|table3:
      caption: <the paper's caption>
      line: <line of the paper's text where the table starts>
      values: {<method>: {line: <int>, <metric or subset key>: <number>, ...}, ...}
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import yaml

from ..errors import LdpmInputError

TABLES = ("table1", "table2", "table3")


def load_paper_values(path: str | Path, tables: tuple[str, ...] = TABLES) -> dict:
    """The parsed file, checked: each of ``tables`` has a caption, a line and numeric values."""
    path = Path(path)
    if not path.is_file():
        raise LdpmInputError(path, "paper values file does not exist",
                             "restore config/paper_values.yaml from the repository")
    data = yaml.safe_load(path.read_text()) or {}
    for table in tables:
        block = data.get(table)
        if not isinstance(block, Mapping) or not isinstance(block.get("values"), Mapping):
            raise LdpmInputError(path, f"no `{table}.values` mapping",
                                 "give `values: {method: {metric: number}}` for each table")
        for method, row in block["values"].items():
            for key, value in (row or {}).items():
                if key != "line" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                    raise LdpmInputError(path, f"{table}.values.{method}.{key} = {value!r} is not a number",
                                         "type the paper's value as a number")
    return data


def paper_table(paper: Mapping, table: str) -> dict[str, dict[str, float]]:
    """``{method: {key: value}}`` of one table (the ``line`` bookkeeping removed)."""
    return {m: {str(k): float(v) for k, v in (row or {}).items() if k != "line"}
            for m, row in paper[table]["values"].items()}


REFERENCES = Path(__file__).resolve().parents[2] / "config" / "references.yaml"


def citation(key: str, table_caption: str | None = None) -> str:
    """``authors, "title"`` of a paper of ``config/references.yaml`` (and its table)."""
    refs = yaml.safe_load(REFERENCES.read_text()) or {}
    if key not in refs:
        raise LdpmInputError(REFERENCES, f"has no reference {key!r}",
                             f"add {key} (authors, title, short) to config/references.yaml")
    ref = refs[key]
    return f'{ref["authors"]}, "{ref["title"]}"' + (f", {table_caption}" if table_caption else "")


def paper_note(paper: Mapping, table: str) -> str:
    """The legend sentence that says where the (paper) columns come from."""
    block = paper[table]
    return (f"(paper) columns: the published values of "
            f"{citation(paper.get('reference', 'ldpm'), block.get('caption', table))}, typed into "
            f"config/paper_values.yaml; the paper's setting: fastMRI brain, 8x, 320x320, 934 test "
            f"slices (see this run's config in the report). Δ = ours − paper.")
