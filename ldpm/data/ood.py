"""Out-of-distribution MRI for the embedded default: real scans that ship inside dipy's wheel.

The embedded training data are simulated contrasts of a skull-stripped template
(:mod:`ldpm.data.embedded`). These two volumes are real acquisitions of another kind, so a
method that only learned the template's look shows it here:

* ``t1_coronal_slice.npy``: one real T1-weighted coronal slice of a skull-stripped brain
  (256 x 256): another orientation, and real rather than simulated contrast and texture;
* ``S0_10slices.nii.gz``: ten axial slices of a real b0 (T2-weighted spin-echo EPI) volume
  (128 x 128, 2 mm), not masked: bright CSF, EPI distortion and blur, a noisy background.

dipy is BSD-3 licensed; its data files are distributed with the wheel. Each image is resampled
to the crop size, scaled to the embedded data's signal level, and scanned with the same
simulated coils, object phase, readout oversampling and k-space noise as the embedded subjects
(:func:`ldpm.data.embedded.write_multicoil_file`). Field strength is not part of either file:
both are written as 3 T.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import LdpmInputError
from .embedded import (SIGNAL_SCALE, _object_phase, coil_maps, ismrmrd_header,
                       write_multicoil_file)

SOURCE = "dipy data files (real MRI; simulated coils)"
FIELD_STRENGTH_T = 3.0
#: volume name -> (dipy file, acquisition attr, subject); the names say "brain" and the
#: acquisitions start with neither AX nor COR, so the reader files them as brain of that contrast
VOLUMES = {
    "file_brain_T1COR_dipy": ("t1_coronal_slice.npy", "T1COR", "dipy_t1"),
    "file_brain_B0EPI_dipy": ("S0_10slices.nii.gz", "B0EPI", "dipy_b0"),
}
#: OOD-val: two more real scans in dipy's wheel, used only to choose recipes (docs/tuning.md),
#: never by training, val, test or Table III: an anisotropic-voxel EPI volume (58 x 58 x 24) and
#: the first volume of a diffusion-weighted series (96 x 96 x 14)
VAL_VOLUMES = {
    "file_brain_ANISO_dipy": ("aniso_vox.nii.gz", "ANISO", "dipy_aniso"),
    "file_brain_PIESNO_dipy": ("test_piesno.nii.gz", "PIESNO", "dipy_piesno"),
}
#: the seed offset of OOD-val's coils, phase and noise (the test OOD set's is 0)
VAL_SEED_OFFSET = 12345


def _dipy_file(name: str) -> Path:
    try:
        import dipy
    except ImportError as e:
        raise LdpmInputError("data.ood", "the out-of-distribution set needs dipy",
                             "pip install dipy (it ships the real scans used)") from e
    path = Path(dipy.__file__).parent / "data" / "files" / name
    if not path.is_file():
        raise LdpmInputError(path, "missing from the installed dipy", "reinstall dipy")
    return path


def _resample(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` [H, W] -> [size, size]: centre-cropped to a square, then anti-aliased resize."""
    from skimage.transform import resize

    h, w = image.shape
    n = min(h, w)
    square = image[(h - n) // 2:(h - n) // 2 + n, (w - n) // 2:(w - n) // 2 + n]
    return resize(square, (size, size), order=1, anti_aliasing=n > size, preserve_range=True)


def ood_slices(volume: str, crop_size: int) -> np.ndarray:
    """The real slices of ``volume`` (a key of :data:`VOLUMES` or :data:`VAL_VOLUMES`)
    [S, crop, crop], >= 0, peak 1."""
    file, _, _ = {**VOLUMES, **VAL_VOLUMES}[volume]
    path = _dipy_file(file)
    if path.suffix == ".npy":
        stack = np.load(path)[None]  # one [H, W] slice, already head up
    else:
        import nibabel as nib

        vol = np.asarray(nib.load(path).dataobj, dtype=np.float64)
        vol = vol[..., 0] if vol.ndim == 4 else vol  # [X, Y, Z]: the first volume of a series
        stack = np.rot90(np.moveaxis(vol, 2, 0), k=1, axes=(1, 2))  # anterior up, as the training data
    stack = np.stack([_resample(np.asarray(s, dtype=np.float64), crop_size) for s in stack])
    stack = np.clip(stack, 0.0, None)
    return stack / max(float(stack.max()), 1e-12)


def build_ood(out_dir: str | Path, embedded_cfg: Mapping[str, Any], crop_size: int,
              drop_last_slices: int, seed: int, *, val: bool = False) -> list[Path]:
    """Write the OOD volumes (``val``: OOD-val's, :data:`VAL_VOLUMES`, with their own coils,
    phase and noise) as fastMRI multicoil files in ``out_dir``.

    A volume with fewer slices than ``drop_last_slices + 1`` (the single T1 slice) repeats its
    last slice for the slices the reader drops, so its real slices are all kept.
    """
    volumes = VAL_VOLUMES if val else VOLUMES
    seed = seed + VAL_SEED_OFFSET if val else seed
    n_coils = int(embedded_cfg["n_coils"])
    full = (2 * crop_size, crop_size)
    fov_mm = 220.0
    paths = []
    for i, (name, (_, acquisition, subject)) in enumerate(volumes.items()):
        slices = ood_slices(name, crop_size)
        if len(slices) <= drop_last_slices:
            slices = np.concatenate([slices, np.repeat(slices[-1:], drop_last_slices, 0)])
        rng = np.random.default_rng([seed, 9000 + i])
        sens = coil_maps(n_coils, full, crop_size / 2, rng)
        phase = _object_phase(full, rng)
        image = slices * SIGNAL_SCALE
        sigma = float(embedded_cfg["noise_std"]) * float(image.max()) * float(np.abs(sens).max())
        header = ismrmrd_header(FIELD_STRENGTH_T, crop_size, len(image), n_coils, fov_mm,
                                {})
        paths.append(write_multicoil_file(Path(out_dir) / f"{name}.h5", image, sens, phase, sigma,
                                          rng, header, {"acquisition": acquisition,
                                                        "patient_id": subject,
                                                        "ldpm_source": SOURCE}))
    return paths
