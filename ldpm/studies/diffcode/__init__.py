"""DiffCode: all-in-one medical image restoration with a latent
diffusion-enhanced vector-quantised codebook prior (Chen et al.), as its own method family.

* :mod:`.degradations` the restoration tasks built from our MRI slices (4x k-space truncation,
  8x Cartesian undersampling, Rician noise), seeded per slice;
* :mod:`.data` CT (AAPM LDCT, DICOM) and PET (NIfTI) pairs read from configured folders;
* :mod:`.models` NAF blocks, the VQ autoencoder with one residual-quantised codebook per task
  (eq. 1-3), the latent diffusion retrieval (eq. 4-6), the restoration network (eq. 7) with
  TARS (eq. 8);
* :mod:`.config` the stages and methods (DiffCode, its Table 2 variants, all-in-one U-Net
  and SwinIR) and what each stage is trained from;
* :mod:`.checkpoints` a trained stage read back, and the frozen prior of stages I + II;
* :mod:`.train`, :mod:`.evaluate`, :mod:`.report` training through :func:`ldpm.train.loop.train`,
  per-task PSNR/SSIM/RMSE, and DiffCode's Tables 1 and 2.

Importing this package registers :data:`STUDY` with :func:`ldpm.methods.graph.register_study`.
"""

from __future__ import annotations

from typing import Any, Mapping

from ...methods.graph import Study, register_study


def _check_paths(config: Mapping[str, Any], source: str) -> None:
    from .config import check_paths

    check_paths(config, source)


#: DiffCode trains and scores its own stages and methods (``ldpm diffcode-train``,
#: ``ldpm diffcode-evaluate``), outside LDPM's graph: the core only checks its config block
STUDY = register_study(Study(name="diffcode", check_paths=_check_paths))
