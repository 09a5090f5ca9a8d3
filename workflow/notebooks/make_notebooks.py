"""Regenerate the papermill template in this folder from the cell sources below.

Run ``python workflow/notebooks/make_notebooks.py`` after editing; the .ipynb file is
committed so that Snakemake can track it as an input. The notebook stays thin: every table,
figure and the report come from :mod:`ldpm.report.build`.
"""

from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).parent

REPORT = [
    ("parameters", '''# Parameters (papermill overrides these)
results_dir = "results"
methods = "zero_filled"              # config `methods`, comma-separated
paper_values = "config/paper_values.yaml"
with_fig3 = 1                        # 0 when no configured method trains the MR-VAE
with_ood = 0                         # 1 when the run scored an out-of-distribution set
stages = ""                          # the training stages of those methods, comma-separated'''),
    (None, '''from pathlib import Path

from IPython.display import Image, Markdown, display

from ldpm.report import build
from ldpm.report.paper import load_paper_values

results = Path(results_dir)
method_list = [m for m in methods.split(",") if m]
paper = load_paper_values(paper_values)'''),
    (None, '''# Table I: every number read from results/metrics/<method>/summary.json; (paper) = the paper's
table1 = build.make_table1(results, method_list, paper)
display(Markdown(table1[1].read_text()))'''),
    (None, '''# Table II: LDPM and its ablations
table2 = build.make_table2(results, method_list, paper)
display(Markdown(table2[1].read_text()))'''),
    (None, '''# Table III: mean PSNR over each subset's volumes in results/metrics/<method>/per_volume.csv,
# and over the out-of-distribution set's in results/metrics/<method>/ood/per_volume.csv
per_volume = build.per_volume_all(results, method_list)
table3 = build.make_table3(results, method_list, paper, per_volume, with_ood=bool(with_ood))
display(Markdown(table3[1].read_text()))'''),
    (None, '''# Fig. 2: two test slices, ground truth and each method with its error map
fig2 = build.make_fig2(results, method_list)
display(Image(filename=str(fig2)))'''),
    (None, '''# Fig. 3: MR-VAE vs the untuned/SD VAE on the ground-truth test slices
if with_fig3:
    fig3, fig3_table = build.make_fig3(results)
    display(Image(filename=str(fig3)))
    display(Markdown(fig3_table[1].read_text()))'''),
    (None, '''# Training curves of every stage this run trained (results/models/<stage>/log.csv)
stage_list = [s for s in stages.split(",") if s]
if stage_list:
    curves = build.make_training_curves(results, stage_list)
    display(Image(filename=str(curves)))'''),
    (None, '''# Per-volume scores, PSNR per contrast/field strength, cost per job (Snakemake's benchmark
# files) and quality against time
plots = build.make_plots(results, method_list, stage_list, per_volume)
display(Markdown(plots[3].read_text()))
for fig in plots[:2] + plots[5:]:
    display(Image(filename=str(fig)))'''),
    (None, '''# results/report.md: all of the above with the config, git commit and data hash
report = build.write_report(results, with_fig3=bool(with_fig3))
print(report)'''),
]

# The LoRA study: one table from results/ (ldpm.studies.lora.report)
LORA = [
    ("parameters", '''# Parameters (papermill overrides these)
results_dir = "results"
methods = "ldpm"                     # the study's rows (ldpm.studies.lora.graph.study_methods), comma-separated
n_steps = 25                         # inference.ldpm.n_steps: the rows without a _s<N> suffix
mix_weights = "0.5,0.5"              # inference.lora.mix_weights'''),
    (None, '''from pathlib import Path

from IPython.display import Markdown, display

from ldpm.studies.lora.report import make_lora_table

method_list = [m for m in methods.split(",") if m]
weights = [float(w) for w in str(mix_weights).split(",") if w]'''),
    (None, '''# every number read from results/metrics, results/models/<stage>/meta.json and results/recon attrs
lora_table = make_lora_table(Path(results_dir), method_list, int(n_steps), weights)
display(Markdown(lora_table[1].read_text()))'''),
    (None, '''# Training loss of each row's own stage(s) (results/models/<stage>/log.csv): raw (faint)
# and moving average (bold); the table gives the mean loss over the first and last 10% of steps
from IPython.display import Image

from ldpm.report.plots import loss_markdown
from ldpm.studies.lora.report import make_lora_curves

curves, losses = make_lora_curves(Path(results_dir), method_list)
display(Image(filename=str(curves)))
display(Markdown(loss_markdown(losses)))'''),
]

# DiffCode: its Table 1 and Table 2 from results/diffcode/metrics
DIFFCODE = [
    ("parameters", '''# Parameters (papermill overrides these)
results_dir = "results"
methods = "lq,diffcode"              # ldpm.studies.diffcode.config.methods(config["diffcode"]), comma-separated
tasks = "mri_sr"                     # diffcode.tasks (table order), comma-separated
sr_scale = 4
acceleration = 8
denoise_sigma = 0.05
paper_values = "config/paper_values_diffcode.yaml"'''),
    (None, '''from pathlib import Path

from IPython.display import Markdown, display

from ldpm.studies.diffcode import report

levels = {"sr_scale": int(sr_scale), "acceleration": int(acceleration), "denoise_sigma": float(denoise_sigma)}
method_list = [m for m in methods.split(",") if m]
report.check_methods(method_list)
task_list = [t for t in tasks.split(",") if t]'''),
    (None, '''# DiffCode Table 1: every number read from results/diffcode/metrics/<method>.json
table1 = report.make_table1(Path(results_dir), method_list, task_list, levels, paper_values)
display(Markdown(table1[1].read_text()))'''),
    (None, '''# DiffCode Table 2: (a) component analysis, (b) codebook and TARS top-k
table2 = report.make_table2(Path(results_dir), paper_values)
display(Markdown(table2[1].read_text()))'''),
    (None, '''# Training loss of every stage the methods use (results/models/diffcode_<stage>/log.csv):
# raw (faint) and moving average (bold); the table gives the mean loss over the first and last
# 10% of steps
from IPython.display import Image

from ldpm.report.plots import loss_markdown

curves, losses = report.make_curves(Path(results_dir), method_list)
display(Image(filename=str(curves)))
display(Markdown(loss_markdown(losses)))'''),
]


def write(name: str, cells: list[tuple[str | None, str]]) -> None:
    nb = nbf.v4.new_notebook()
    for i, (tag, src) in enumerate(cells):
        cell = nbf.v4.new_code_cell(src)
        cell.id = f"cell-{i}"  # stable ids: regenerating gives the same file
        if tag:
            cell.metadata["tags"] = [tag]
        nb.cells.append(cell)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbf.write(nb, HERE / name)


if __name__ == "__main__":
    write("report.ipynb", REPORT)
    write("diffcode.ipynb", DIFFCODE)
    write("lora.ipynb", LORA)
