"""Regenerate the papermill templates in this folder from the cell sources below.

Run ``python workflow/notebooks/make_notebooks.py`` after editing; the .ipynb files are
committed so that Snakemake can track them as inputs.
"""

from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).parent

TABLE1 = [
    ("parameters", '''# Parameters (papermill overrides these)
results_dir = "results"
methods = "zero_filled"'''),
    (None, '''from pathlib import Path

from IPython.display import Image, Markdown, display

from ldpm.report.figures import pick_examples, plot_examples, read_keys
from ldpm.report.tables import load_summary, metrics_long, numeric_table, write_table

results = Path(results_dir)
method_list = [m for m in methods.split(",") if m]
summaries = [load_summary(results / "metrics" / m / "summary.json") for m in method_list]'''),
    (None, '''# Table I: every number read from results/metrics/<method>/summary.json
numeric = numeric_table(metrics_long(summaries))
paths = write_table(numeric, results / "tables" / "table1",
                    "Table I: quantitative evaluation at 8x (test set)")
display(Markdown(paths[1].read_text()))'''),
    (None, '''# Fig. 2: two test slices, ground truth and each method with its error map
shards = sorted((results / "data" / "test").glob("shard*.h5"))
gt = {k: v for s in shards for k, v in read_keys(s, "target").items()}
recons = {m: {k: v for s in shards
              for k, v in read_keys(results / "recon" / m / s.name, "recon").items()}
          for m in method_list}
examples = pick_examples(list(gt), 2)
png = plot_examples(gt, recons, examples, results / "figures" / "fig2_examples.png")
display(Image(filename=str(png)))'''),
]


def write(name: str, cells: list[tuple[str | None, str]]) -> None:
    nb = nbf.v4.new_notebook()
    for tag, src in cells:
        cell = nbf.v4.new_code_cell(src)
        if tag:
            cell.metadata["tags"] = [tag]
        nb.cells.append(cell)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbf.write(nb, HERE / name)


if __name__ == "__main__":
    write("table1.ipynb", TABLE1)
