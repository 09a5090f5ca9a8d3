"""The install routes agree with pyproject.toml: the lock pins every dependency within its range,
and environment.yml (a cluster job's environment) lists exactly what the jobs import."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
#: what a job runs besides the library: the notebooks (papermill + kernel)
NOTEBOOK_RUNNER = ("papermill", "ipykernel", "nbformat")


def _name(req: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(req).name).lower()


def test_lock_pins_every_dependency_within_its_range():
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if m:
            pins[_name(m.group(1))] = m.group(2)
    extras = PYPROJECT["optional-dependencies"]
    for spec in [*PYPROJECT["dependencies"], *extras["workflow"], *extras["test"]]:
        req = Requirement(spec)
        assert _name(spec) in pins, f"{req.name} is not in requirements.lock: run `make lock`"
        assert req.specifier.contains(pins[_name(spec)], prereleases=True), (
            f"requirements.lock pins {req.name}=={pins[_name(spec)]}, outside {req.specifier}: run `make lock`")


def test_environment_yml_is_what_the_jobs_import_and_nothing_else():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert not [p for p in pip if p.startswith("-") or "/" in p or p.startswith(".")], \
        "no editable or path install of the checkout: jobs import it from PYTHONPATH"
    names = [_name(p) for p in pip]
    assert len(names) == len(set(names)), "a package is listed twice"
    assert "snakemake" not in names and not any(n.startswith("snakemake-") for n in names)
    runner = [s for s in PYPROJECT["optional-dependencies"]["workflow"] if _name(s) in NOTEBOOK_RUNNER]
    assert sorted(pip) == sorted([*PYPROJECT["dependencies"], *runner])


def test_rules_call_the_checkouts_cli_not_an_installed_script():
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for line in smk.read_text().splitlines():
            code = line.split("#")[0]
            assert not re.search(r'["\s]ldpm [a-z]', code), (smk.name, line)
