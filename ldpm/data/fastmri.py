"""Reader for fastMRI multicoil HDF5 files (brain and knee releases).

A fastMRI multicoil file holds ``kspace`` (complex64, [slices, coils, H, W], H the 2x
oversampled readout), optionally ``reconstruction_rss``, the ``ismrmrd_header`` XML and the
attrs ``acquisition``, ``patient_id``, ``max`` and ``norm``. The target of each slice is built
exactly as fastMRI builds ``reconstruction_rss``: ``center_crop(rss(ifft2c(kspace[s])))``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import LdpmInputError
from ..io import open_hdf5
from ..mri import center_crop, ifft2c, rss

ISMRMRD_NS = "http://www.ismrm.org/ISMRMRD"
#: Scanners report e.g. 1.494 or 2.89362 T; values below this are 1.5 T, above 3 T.
FIELD_STRENGTH_SPLIT_T = 2.2
#: The reported field strengths accepted: the 1.5 T bucket takes [1.0, 2.2), the 3 T bucket
#: [2.2, 3.5]; anything else (0, negative, NaN, 7 T) is not a scanner of either bucket.
FIELD_STRENGTH_RANGE_T = (1.0, 3.5)
_UNREADABLE_FIX = "re-download the file; it is truncated or not HDF5"
KNEE_CONTRASTS = {"CORPD_FBK": "PD", "CORPDFS_FBK": "PDFS"}


@dataclass
class VolumeSlices:
    """The kept slices of one volume: ``targets`` [N, crop, crop] float32 and their indices."""

    targets: np.ndarray
    slice_index: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def crop_width(height: int, width: int, crop_size: int) -> int:
    """The side of the square centre crop of an ``height x width`` image: ``crop_size``, or the
    image's own width (height) where it is narrower, as fastMRI's transforms crop their narrow
    volumes (the "FLAIR 203" case)."""
    return min(int(crop_size), int(height), int(width))


def rss_target(kspace_slice: np.ndarray, crop_size: int) -> np.ndarray:
    """fastMRI's ``reconstruction_rss`` of one slice ([coils, H, W] k-space), float32
    [crop_size, crop_size]: the centre crop of side :func:`crop_width`, zero-padded back to
    ``crop_size`` where the image is narrower (so every slice has the same size)."""
    image = rss(ifft2c(kspace_slice), coil_axis=0)
    side = crop_width(*image.shape[-2:], crop_size)
    out = np.zeros((crop_size, crop_size), dtype=np.float32)
    start = (crop_size - side) // 2
    out[start:start + side, start:start + side] = center_crop(image, (side, side))
    return out


def check_field_strength(tesla: float, where: str) -> float:
    """``tesla`` itself if it lies in :data:`FIELD_STRENGTH_RANGE_T`, else LdpmInputError."""
    low, high = FIELD_STRENGTH_RANGE_T
    if not (np.isfinite(tesla) and low <= tesla <= high):
        raise LdpmInputError(where, f"systemFieldStrength_T is {tesla} T, outside the {low}-{high} T "
                             "of the 1.5 T and 3 T buckets the split is stratified by",
                             "correct the field strength in its ismrmrd_header or remove "
                             "this volume (only 1.5 T and 3 T scans are supported)")
    return float(tesla)


def round_field_strength(tesla: float, where: str = "field strength") -> float:
    """Nominal field strength: 1.5 below 2.2 T, else 3.0 (out of range: LdpmInputError)."""
    return 1.5 if check_field_strength(tesla, where) < FIELD_STRENGTH_SPLIT_T else 3.0


def _text(value: Any) -> str:
    if isinstance(value, np.ndarray):
        value = value.tobytes() if value.dtype.kind in "uiS" else value.item()
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def parse_field_strength(header_xml: str, where: str) -> float:
    """Field strength in tesla from an ISMRMRD header (``systemFieldStrength_T``)."""
    fix = "use an unmodified fastMRI file (its ismrmrd_header gives systemFieldStrength_T)"
    try:
        root = ET.fromstring(header_xml.strip().rstrip("\x00"))
    except ET.ParseError as e:
        raise LdpmInputError(where, f"ismrmrd_header is not valid XML ({e})", fix) from e
    node = root.find(f"{{{ISMRMRD_NS}}}acquisitionSystemInformation/"
                     f"{{{ISMRMRD_NS}}}systemFieldStrength_T")
    if node is None:  # headers written without the namespace
        node = root.find("acquisitionSystemInformation/systemFieldStrength_T")
    if node is None or not (node.text or "").strip():
        raise LdpmInputError(where, "ismrmrd_header has no systemFieldStrength_T", fix)
    try:
        tesla = float(node.text)
    except ValueError as e:
        raise LdpmInputError(where, f"systemFieldStrength_T {node.text!r} is not a number",
                             fix) from e
    return check_field_strength(tesla, where)


def anatomy_and_contrast(acquisition: str | None, path: Path) -> tuple[str, str]:
    """('brain'|'knee', contrast) from the ``acquisition`` attr, else from the file name."""
    acq = (acquisition or "").upper()
    parts = path.stem.split("_")
    if not acq and len(parts) > 2 and parts[1] in ("brain", "knee"):
        acq = parts[2].upper()  # fastMRI names are file_brain_AXT2_200_2000019.h5
    name = path.name.lower()
    if acq.startswith("AX"):
        anatomy = "brain"
    elif acq.startswith("COR"):
        anatomy = "knee"
    elif "brain" in name or "knee" in name:
        anatomy = "brain" if "brain" in name else "knee"
    else:
        raise LdpmInputError(path, f"cannot tell brain from knee (acquisition {acquisition!r})",
                             "use a fastMRI file with its 'acquisition' attr (e.g. AXT2)")
    if not acq:
        raise LdpmInputError(path, "no 'acquisition' attr and no contrast in the file name",
                             "use an unmodified fastMRI file (attr acquisition, e.g. AXT2)")
    if anatomy == "brain":
        contrast = acq.removeprefix("AX")
    else:
        contrast = KNEE_CONTRASTS.get(acq, acq.removeprefix("COR").removesuffix("_FBK"))
    return anatomy, contrast


def _check_kspace(ks: Any, path: Path, crop_size: int, drop_last_slices: int) -> None:
    fix_release = "use the fastMRI multicoil release (kspace complex64 [slices, coils, H, W])"
    if not isinstance(ks, h5py.Dataset):
        raise LdpmInputError(path, "'kspace' is not a dataset", fix_release)
    if ks.ndim == 3:
        raise LdpmInputError(path, "kspace is 3-D [slices, H, W]: singlecoil files are not "
                             "supported, use the multicoil release", fix_release)
    if ks.ndim != 4:
        raise LdpmInputError(path, f"kspace has shape {ks.shape}, expected 4-D "
                             "[slices, coils, H, W]", fix_release)
    if ks.dtype.kind != "c":
        raise LdpmInputError(path, f"kspace has dtype {ks.dtype}, expected complex",
                             fix_release)
    n_slices, n_coils, height, width = ks.shape
    if n_coils < 1:
        raise LdpmInputError(path, f"kspace has shape {ks.shape}: 0 coils",
                             "use a complete multicoil file (at least one coil)")
    if height < 1 or width < 1:
        raise LdpmInputError(path, f"kspace has shape {ks.shape}: an empty image",
                             fix_release)
    if n_slices < drop_last_slices + 1:
        raise LdpmInputError(path, f"kspace has {n_slices} slices; at least "
                             f"{drop_last_slices + 1} are needed (the last {drop_last_slices} "
                             "are dropped)", "remove this volume or lower data.drop_last_slices")
    if crop_width(height, width, crop_size) < crop_size // 4:
        raise LdpmInputError(path, f"image is {height}x{width}, less than a quarter of the "
                             f"{crop_size}x{crop_size} crop", "lower data.crop_size")


def read_volume(path: str | Path, crop_size: int = 320, drop_last_slices: int = 3) -> VolumeSlices:
    """Read one fastMRI multicoil file into RSS targets, dropping the last slices.

    k-space is read one slice at a time (real files are ~1 GB). Any bad input raises
    :class:`LdpmInputError` naming the file, the problem and the fix.
    """
    path = Path(path)
    with open_hdf5(path, "file", "check data.fastmri_root and that the file was fully "
                   "downloaded", _UNREADABLE_FIX) as f:
        return _read_open_file(f, path, crop_size, drop_last_slices)


def read_kspace_slices(path: str | Path, slices: list[int]) -> np.ndarray:
    """The raw multicoil k-space of the given slices, ``[N, coils, H, W]`` complex64.

    Bad input (missing or unreadable file, no 4-D complex ``kspace``, a slice out of range,
    NaN/inf) raises :class:`LdpmInputError` naming the file.
    """
    path = Path(path)
    fix = "keep the raw files the slice stores were made from where preprocessing read them"
    with open_hdf5(path, "raw multicoil file", fix, _UNREADABLE_FIX) as f:
        if "kspace" not in f:
            raise LdpmInputError(path, "has no 'kspace' dataset",
                                 "use a fastMRI multicoil file (raw k-space)")
        ks = f["kspace"]
        _check_kspace(ks, path, crop_size=0, drop_last_slices=0)
        out = np.empty((len(slices), *ks.shape[1:]), dtype=np.complex64)
        for i, s in enumerate(slices):
            if not 0 <= s < ks.shape[0]:
                raise LdpmInputError(path, f"has no slice {s} (it has {ks.shape[0]})",
                                     "rebuild the slice stores from these raw files")
            out[i] = ks[s]
            if not np.isfinite(out[i]).all():
                raise LdpmInputError(path, f"kspace slice {s} contains NaN or inf",
                                     "re-download the file; it is corrupt")
    return out


def _read_open_file(f: h5py.File, path: Path, crop_size: int,
                    drop_last_slices: int) -> VolumeSlices:
    if "kspace" not in f:
        raise LdpmInputError(path, "has no 'kspace' dataset",
                             "use a fastMRI multicoil file (raw k-space, not a DICOM export)")
    ks = f["kspace"]
    _check_kspace(ks, path, crop_size, drop_last_slices)
    if "ismrmrd_header" not in f:
        raise LdpmInputError(path, "has no 'ismrmrd_header' dataset",
                             "use an unmodified fastMRI file (it holds the ISMRMRD header)")
    field_t = parse_field_strength(_text(f["ismrmrd_header"][()]), str(path))
    acquisition = _text(f.attrs["acquisition"]) if "acquisition" in f.attrs else None
    anatomy, contrast = anatomy_and_contrast(acquisition, path)
    subject = _text(f.attrs["patient_id"]) if "patient_id" in f.attrs else path.stem

    n_keep = ks.shape[0] - drop_last_slices
    targets = np.empty((n_keep, crop_size, crop_size), dtype=np.float32)
    for s in range(n_keep):
        k = ks[s]
        if not np.isfinite(k).all():
            raise LdpmInputError(path, f"kspace slice {s} contains NaN or inf",
                                 "re-download the file; it is corrupt")
        with np.errstate(over="ignore", invalid="ignore"):
            targets[s] = rss_target(k, crop_size)
        if not np.isfinite(targets[s]).all():
            raise LdpmInputError(path, f"the RSS target of slice {s} is not finite (its k-space "
                                 "overflows float32)", "re-download the file; it is corrupt")
    _check_targets_not_empty(targets, path)
    meta = {
        "volume": path.stem, "source_file": str(path), "anatomy": anatomy,
        "contrast": contrast, "field_strength": round_field_strength(field_t),
        "subject": subject or path.stem, "acquisition": acquisition,
        "crop_width": crop_width(*ks.shape[-2:], crop_size),
    }
    return VolumeSlices(targets, np.arange(n_keep, dtype=np.int64), meta)


def _check_targets_not_empty(targets: np.ndarray, path: Path) -> None:
    """Refuse a volume whose kept slices are all zero, or any kept slice that is all zero:
    training divides each slice by its volume's max and by its measurement's max."""
    if not targets.size or not targets.max() > 0:
        raise LdpmInputError(path, f"the RSS targets of all {len(targets)} kept slices are zero "
                             "(volume max 0)", "remove this volume: it holds no signal")
    empty = np.flatnonzero(targets.reshape(len(targets), -1).max(axis=1) <= 0)
    if len(empty):
        raise LdpmInputError(path, f"the RSS target of slice {int(empty[0])} is all zero "
                             f"({len(empty)} such slice(s) of {len(targets)})",
                             "remove this volume: a slice without signal cannot be normalised")


def list_volumes(root: str | Path) -> list[Path]:
    """Sorted ``*.h5`` files under ``root`` (searched recursively); volume names must be unique."""
    root = Path(root)
    if not root.is_dir():
        raise LdpmInputError(root, "folder not found",
                             "set data.fastmri_root to the folder of fastMRI multicoil *.h5")
    files = sorted(p for p in root.rglob("*.h5") if p.is_file())
    if not files:
        raise LdpmInputError(root, "holds no *.h5 files",
                             "set data.fastmri_root to the folder of fastMRI multicoil *.h5")
    stems: dict[str, Path] = {}
    for p in files:
        if p.stem in stems:
            raise LdpmInputError(root, f"two files named {p.name} ({stems[p.stem]} and {p})",
                                 "keep one copy: volume names must be unique")
        stems[p.stem] = p
    return files
