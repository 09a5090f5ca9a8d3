"""A trained baseline is one module: declared outside the package (tests/helpers/toy_baseline.py)
and named in LDPM_BASELINE_MODULES, it is a training stage and a method of the DAG, its stage
config is checked, it trains with the shared trainer and reconstructs through the registry."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import SNAKEMAKE, job_stats

REPO = Path(__file__).resolve().parents[1]
HELPERS = Path(__file__).resolve().parent / "helpers"


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(HELPERS), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, LDPM_BASELINE_MODULES="toy_baseline",
                PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


def test_the_dag_plans_a_new_baselines_training_and_reconstruction(tmp_path):
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(yaml.safe_dump({
        "methods": ["zero_filled", "toy"], "train": {"stages": {"toy": {"n_steps": 3}}},
        "inference": {"n_shards": 2}, "diffcode": {"enabled": False}, "lora": {"enabled": False}}))
    proc = subprocess.run([SNAKEMAKE, "-n", "all", "--snakefile", str(REPO / "Snakefile"),
                           "--directory", str(tmp_path / "w"), "--configfile", str(cfg)],
                          capture_output=True, text=True, env=_env(), timeout=600, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    counts = job_stats(out)
    assert counts["train_baseline"] == 1 and "train" not in counts, counts
    assert counts["reconstruct"] == 2 * 2, counts  # zero_filled and toy on each shard
    assert "results/models/toy/final" in out
    assert all(f"results/recon/toy/shard{i}.h5" in out for i in (0, 1))


TRAIN_AND_RECONSTRUCT = """
import json, sys
from pathlib import Path
import h5py, numpy as np, torch
from ldpm.config import validate_stage_overrides
from ldpm.errors import LdpmInputError
from ldpm.methods import method_stages, reconstruct_shard
from ldpm.report.tables import METHOD_NAMES
from ldpm.train.baselines import train_baseline

torch.manual_seed(0)
out = Path(sys.argv[1])
images = torch.rand(4, 1, 16, 16)
train_baseline("toy", images, {"n_steps": 2, "ckpt_every": 1}, out / "toy", seed=0, log=False)
shard = out / "shard.h5"
mask = np.zeros((2, 16), np.float32)
mask[:, 4:12] = 1
with h5py.File(shard, "w") as f:
    f["target"], f["mask"] = images[:2, 0].numpy(), mask
    f["volume"], f["slice"] = np.array([b"v0", b"v0"]), np.arange(2)
reconstruct_shard("toy", shard, out / "recon.h5", {"toy": out / "toy"}, {"seed": 0})
with h5py.File(out / "recon.h5") as f:
    recon = f["recon"][()]
try:
    validate_stage_overrides("toy", {"kernel": 3})
    refused = False
except LdpmInputError:
    refused = True
print(json.dumps({"shape": list(recon.shape), "finite": bool(np.isfinite(recon).all()),
                  "stages": method_stages("toy", False), "title": METHOD_NAMES["toy"],
                  "refused": refused}))
"""


def test_a_new_baseline_trains_and_reconstructs_from_its_module_alone(tmp_path):
    proc = subprocess.run([sys.executable, "-c", TRAIN_AND_RECONSTRUCT, str(tmp_path)],
                          capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"shape": [2, 16, 16], "finite": True, "stages": ["toy"],
                   "title": "Toy (one conv)", "refused": True}


def _schema_names(schema) -> set[str]:
    """The stage, inference block and method names the schema file lists itself."""
    props = schema["properties"]
    return (set(props["train"]["properties"]["stages"]["properties"])
            | set(props["inference"]["properties"]) | set(props["methods"]["items"]["enum"])
            | {k.removeprefix("stage_") for k in schema["$defs"]})


def test_the_generic_code_names_no_baseline():
    """The baselines' names appear as strings only in their own modules: the trainer, the
    registry, the graph, the checkpoints, the config check, the schema file and the tables ask
    ldpm.baselines."""
    from ldpm.methods import BASELINES

    generic = ["ldpm/train/baselines.py", "ldpm/train/stages.py", "ldpm/methods/__init__.py",
               "ldpm/methods/baselines.py", "ldpm/methods/graph.py", "ldpm/checkpoints.py",
               "ldpm/config.py", "ldpm/report/tables.py", "config/schemas/config.schema.yaml"]
    found = {}
    for rel in generic:
        text = (REPO / rel).read_text()
        names = ({n.value for n in ast.walk(ast.parse(text))
                  if isinstance(n, ast.Constant) and isinstance(n.value, str)}
                 if rel.endswith(".py") else _schema_names(yaml.safe_load(text)))
        found.update({rel: sorted(names & set(BASELINES))} if names & set(BASELINES) else {})
    assert found == {}
