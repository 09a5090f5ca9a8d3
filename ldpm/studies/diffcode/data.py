"""DiffCode's CT and PET tasks: real LQ/HQ pairs read from configured folders.

* **CT denoising** (AAPM Low Dose CT Grand Challenge, ``diffcode.ct_path``): one folder per
  patient, each with a quarter-dose and a full-dose DICOM series in sub-folders whose names
  start with ``quarter`` and ``full`` (the challenge's ``quarter_1mm``/``full_1mm``, or
  ``quarter_dose``/``full_dose``). Slices are paired by position (``ImagePositionPatient`` z,
  else ``InstanceNumber``); values are HU (``RescaleSlope``/``Intercept``) mapped to
  ``(HU + 1024) / 4096`` and clipped to [0, 1].
* **PET synthesis** (``diffcode.pet_path``): one folder per subject with ``low_dose.nii[.gz]``
  (the reduced-dose reconstruction) and ``full_dose.nii[.gz]``, read with nibabel; axial
  slices are the last array axis. Values as stored.

Subjects are split train/val/test with the pipeline's seeded by-subject split
(:func:`ldpm.data.store.split_subjects`, ``data.split_fractions``). With no folder configured a
task is not run and its table cells say ``n/a: no data configured``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from ...data.store import split_subjects
from ...errors import LdpmInputError
from .degradations import DATA_TASKS


@dataclass
class PairedVolume:
    """One subject's co-registered LQ and HQ slices, [N, H, W] float32 each."""

    name: str
    lq: np.ndarray
    hq: np.ndarray


def no_data_reason(task: str) -> str:
    """Why a file-based task has no cells: the config names no folder for it."""
    return f"no data configured (set diffcode.{DATA_TASKS[task]})"


def task_availability(dc: Mapping) -> dict[str, str | None]:
    """Configured task -> ``None`` (runs) or the reason it has no data."""
    return {t: (no_data_reason(t) if t in DATA_TASKS and not dc.get(DATA_TASKS[t]) else None)
            for t in dc["tasks"]}


def _subject_dirs(root: str | Path, key: str) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise LdpmInputError(f"diffcode.{key} = {root}", "is not a folder",
                             "point it at the folder of per-subject folders, or set it to null")
    subjects = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subjects:
        raise LdpmInputError(f"diffcode.{key} = {root}", "has no subject folders",
                             "put one folder per patient/subject in it (see ldpm/studies/diffcode/data.py)")
    return subjects


def _one_child(folder: Path, prefix: str) -> Path:
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.lower().startswith(prefix)]
    if len(found) != 1:
        raise LdpmInputError(folder, f"needs exactly one sub-folder named {prefix}* "
                             f"(found {len(found)})", f"put the {prefix}-dose series in one {prefix}* folder")
    return found[0]


def read_dicom_series(folder: str | Path) -> np.ndarray:
    """A DICOM series as HU slices [N, H, W] float32, sorted by slice position."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise LdpmInputError(folder, "has no DICOM files", "put the series' .dcm/.IMA files in it")
    slices = []
    for f in files:
        try:
            ds = pydicom.dcmread(f)
            pixels = ds.pixel_array.astype(np.float32)
        except (InvalidDicomError, AttributeError, ValueError, OSError) as e:
            raise LdpmInputError(f, f"is not a readable DICOM image ({type(e).__name__}: {e})",
                                 "keep only DICOM image files in the series folder") from e
        hu = pixels * float(getattr(ds, "RescaleSlope", 1.0)) + float(getattr(ds, "RescaleIntercept", 0.0))
        pos = getattr(ds, "ImagePositionPatient", None)
        key = float(pos[2]) if pos is not None else float(getattr(ds, "InstanceNumber", len(slices)))
        slices.append((key, hu))
    shapes = {s.shape for _, s in slices}
    if len(shapes) != 1:
        raise LdpmInputError(folder, f"slices of different sizes {sorted(shapes)}",
                             "keep one series per folder")
    return np.stack([s for _, s in sorted(slices, key=lambda t: t[0])]).astype(np.float32)


def hu_to_unit(hu: np.ndarray) -> np.ndarray:
    """HU -> ``(HU + 1024) / 4096`` clipped to [0, 1]."""
    return np.clip((hu + 1024.0) / 4096.0, 0.0, 1.0).astype(np.float32)


def read_ct_pairs(root: str | Path) -> list[PairedVolume]:
    """Quarter-dose (LQ) / full-dose (HQ) CT pairs per patient (AAPM LDCT layout, see module doc)."""
    out = []
    for subject in _subject_dirs(root, "ct_path"):
        lq = read_dicom_series(_one_child(subject, "quarter"))
        hq = read_dicom_series(_one_child(subject, "full"))
        if lq.shape != hq.shape:
            raise LdpmInputError(subject, f"quarter-dose {lq.shape} and full-dose {hq.shape} differ",
                                 "give both series the same slices")
        out.append(PairedVolume(subject.name, hu_to_unit(lq), hu_to_unit(hq)))
    return out


def _nifti(folder: Path, stem: str) -> np.ndarray:
    import nibabel as nib

    for name in (f"{stem}.nii.gz", f"{stem}.nii"):
        path = folder / name
        if path.is_file():
            try:
                data = np.asarray(nib.load(str(path)).get_fdata(), dtype=np.float32)
            except Exception as e:  # nibabel raises several types for broken files
                raise LdpmInputError(path, f"is not a readable NIfTI file ({type(e).__name__}: {e})",
                                     "replace it with a valid .nii/.nii.gz volume") from e
            if data.ndim != 3:
                raise LdpmInputError(path, f"has shape {data.shape}, not a 3-D volume",
                                     "store one 3-D PET volume per file")
            return np.ascontiguousarray(np.moveaxis(data, -1, 0))
    raise LdpmInputError(folder, f"has no {stem}.nii[.gz]", f"add the {stem.replace('_', '-')} volume")


def read_pet_pairs(root: str | Path) -> list[PairedVolume]:
    """Low-dose (LQ) / full-dose (HQ) PET pairs per subject (NIfTI, see module doc)."""
    out = []
    for subject in _subject_dirs(root, "pet_path"):
        lq, hq = _nifti(subject, "low_dose"), _nifti(subject, "full_dose")
        if lq.shape != hq.shape:
            raise LdpmInputError(subject, f"low-dose {lq.shape} and full-dose {hq.shape} differ",
                                 "resample both to the same grid")
        out.append(PairedVolume(subject.name, lq, hq))
    return out


def read_task_pairs(task: str, dc: Mapping) -> list[PairedVolume]:
    """All subjects of a file-based task; :class:`LdpmInputError` when it has no folder."""
    key = DATA_TASKS.get(task)
    if key is None:
        raise LdpmInputError(f"task {task!r}", "is simulated from MRI slices, not read from files",
                             f"use one of {', '.join(DATA_TASKS)}")
    if not dc.get(key):
        raise LdpmInputError(f"diffcode.{key}", no_data_reason(task), "set the folder or drop the task")
    return read_ct_pairs(dc[key]) if task == "ct_denoise" else read_pet_pairs(dc[key])


def split_pairs(volumes: list[PairedVolume], split: str, fractions: Mapping[str, float],
                seed: int) -> list[PairedVolume]:
    """The subjects of ``split`` (seeded by-subject split, as for the MRI manifest)."""
    assignment = split_subjects({v.name: 0 for v in volumes}, fractions, seed)
    return [v for v in volumes if assignment[v.name] == split]
