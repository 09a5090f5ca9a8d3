"""The LoRA study: low-rank adapters on LDPM's frozen denoiser (after the two-LoRA SUPIR of
``config/references.yaml``: supir_lora) against its frozen prior and fewer sampling steps.

* :mod:`.graph` its stages and methods (torch-free), declared to the core below;
* :mod:`.models` the adapters on the U-Net's attention projections: add, save, load, combine;
* :mod:`.train` its training stages (presets, eq. 7's and the denoiser's losses), through
  :func:`ldpm.train.loop.train`;
* :mod:`.methods` its reconstruction methods: LDPM with the adapted denoiser;
* :mod:`.report` its table (``results/tables/lora.*``).

Importing this package registers :data:`STUDY` with :func:`ldpm.methods.graph.register_study`.
"""

from __future__ import annotations

from typing import Any, Mapping

from ...methods.graph import Study, register_study
from . import graph


def _presets(preset: str) -> Mapping[str, Mapping[str, Any]]:
    from .train import DEFAULT_CONFIGS, PAPER_CONFIGS

    return {"default": DEFAULT_CONFIGS, "paper": PAPER_CONFIGS}[preset]


def _train(*args: Any, **kwargs: Any) -> Any:
    from .train import run_lora_stage

    return run_lora_stage(*args, **kwargs)


def _load_methods() -> None:
    from . import methods  # noqa: F401  (registers them)


STUDY = register_study(Study(
    name="lora", stages=graph.LORA_STAGES, methods=tuple(graph.LORA_METHODS),
    step_methods=tuple(graph.LORA_METHODS), stage_dependencies=graph.stage_dependencies,
    method_stages=graph.method_stages, method_options=graph.method_options,
    rows=graph.study_methods, presets=_presets, train=_train, load_methods=_load_methods))
