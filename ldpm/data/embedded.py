"""The embedded default dataset: fastMRI-format multicoil brain files built from real anatomy.

The anatomy is real: nilearn ships the MNI152 (2009) template, an average of real T1-weighted
scans, with its grey-matter, white-matter and brain-mask maps (1 mm, skull-stripped), so no
network is needed. Each subject is a seeded smooth deformation of that anatomy (small affine
plus a low-amplitude elastic warp) scanned on an axial slab of the cerebrum.

The contrast is simulated: the tissue fractions (GM, WM, CSF = mask - GM - WM) are turned into
FLAIR, T1, T1PRE, T1POST and T2 images with MR signal equations and approximate literature
relaxation times, multiplied by ``0.7 + 0.3 * template`` to keep the template's fine texture.
The coils are simulated too: smooth complex sensitivities, a smooth object phase, 2x readout
oversampling and complex Gaussian k-space noise. The files are then read exactly like fastMRI
by :func:`ldpm.data.fastmri.read_volume`. Only the brain is present (no skull or scalp).
"""

from __future__ import annotations

import functools
import zlib
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import h5py
import numpy as np
from scipy import ndimage

from ..errors import LdpmInputError
from ..io import atomic_path
from ..mri import fft2c
from .fastmri import rss_target

SOURCE = "nilearn MNI152 2009 template (simulated contrast and coils)"
#: Peak object magnitude, of the order of fastMRI's raw values (code must normalise).
SIGNAL_SCALE = 1e-3
#: Axial range of the cerebrum in template voxels (z axis of 189), and slab spacing (mm).
Z_RANGE = (60.0, 135.0)
SPACING_MM = (3.0, 5.0)
HEAD_FILL = 0.85  # fraction of the field of view the brain spans

#: (T1 ms, T2 ms, proton density) per tissue and field strength. Approximate literature values:
#: 1.5 T textbook values (e.g. Bernstein et al., Handbook of MRI Pulse Sequences); 3 T from
#: Wansapura et al., JMRI 1999 (WM T1 832, GM T1 1331 ms). CSF T1 ~4 s at both.
TISSUES: dict[float, dict[str, tuple[float, float, float]]] = {
    1.5: {"gm": (1000.0, 100.0, 0.80), "wm": (650.0, 80.0, 0.69), "csf": (4000.0, 2000.0, 1.0)},
    3.0: {"gm": (1330.0, 110.0, 0.80), "wm": (830.0, 80.0, 0.69), "csf": (4200.0, 1800.0, 1.0)},
}
#: Sequence timings in ms. T1POST is T1PRE after gadolinium (see :func:`contrast_image`).
SEQUENCES: dict[str, dict[str, float]] = {
    "T1": {"TR": 500.0, "TE": 10.0},
    "T1PRE": {"TR": 650.0, "TE": 12.0},
    "T1POST": {"TR": 650.0, "TE": 12.0},
    "T2": {"TR": 4000.0, "TE": 100.0},
    "FLAIR": {"TR": 9000.0, "TE": 120.0, "TI": 2500.0},
}
#: Gadolinium: R1 increase r1 * C (4 /mM/s * 0.25 mM) in ms^-1, applied on a thin rim at the
#: brain surface (meninges and cortical vessels enhance; intact brain tissue does not).
GD_DELTA_R1_PER_MS = 1.0e-3


# --------------------------------------------------------------------------- names

def subject_name(subject_index: int) -> str:
    return f"s{subject_index:03d}"


def subject_of(volume: str) -> str:
    """The subject of an embedded volume name (``file_brain_AXT1_3T_s003`` -> ``s003``)."""
    return volume.rsplit("_", 1)[-1]


def subject_field_strength(embedded_cfg: Mapping[str, Any], subject_index: int) -> float:
    strengths = embedded_cfg["field_strengths"]
    return float(strengths[subject_index % len(strengths)])


def volume_name(contrast: str, field_strength: float, subject_index: int) -> str:
    tag = "1p5T" if field_strength < 2.2 else "3T"
    return f"file_brain_AX{contrast}_{tag}_{subject_name(subject_index)}"


def embedded_subjects(embedded_cfg: Mapping[str, Any]) -> list[str]:
    return [subject_name(i) for i in range(int(embedded_cfg["n_subjects"]))]


def subject_volume_names(embedded_cfg: Mapping[str, Any], subject_index: int) -> list[str]:
    """The volumes of one subject: one per configured contrast (a multi-contrast exam)."""
    fs = subject_field_strength(embedded_cfg, subject_index)
    return [volume_name(c, fs, subject_index) for c in embedded_cfg["contrasts"]]


def embedded_volume_names(embedded_cfg: Mapping[str, Any]) -> list[str]:
    """All volume names (file stems), subject by subject."""
    return [v.name for v in embedded_volumes(embedded_cfg)]


class EmbeddedVolume(NamedTuple):
    name: str  # file stem, e.g. file_brain_AXT1_3T_s003
    subject: str  # e.g. s003
    subject_index: int
    contrast: str
    field_strength: float


def embedded_volumes(embedded_cfg: Mapping[str, Any]) -> list[EmbeddedVolume]:
    """Every embedded volume, subject by subject, each subject with every contrast."""
    out = []
    for i in range(int(embedded_cfg["n_subjects"])):
        fs = subject_field_strength(embedded_cfg, i)
        out += [EmbeddedVolume(volume_name(c, fs, i), subject_name(i), i, c, fs)
                for c in embedded_cfg["contrasts"]]
    return out


# --------------------------------------------------------------------------- anatomy

@functools.lru_cache(maxsize=1)
def _template() -> dict[str, Any]:
    """The MNI152 maps (float32) once per process, plus a smooth rim at the brain surface."""
    from nilearn import datasets  # slow import; only needed when building

    def load(fn: Any) -> np.ndarray:
        return np.asarray(fn(resolution=1).get_fdata(), dtype=np.float32)

    mask = load(datasets.load_mni152_brain_mask)
    smooth = ndimage.gaussian_filter(mask, sigma=1.5)
    idx = np.nonzero(mask > 0.5)
    extent = max(float(np.ptp(idx[0])), float(np.ptp(idx[1]))) + 1.0
    return {
        "t1": load(datasets.load_mni152_template), "gm": load(datasets.load_mni152_gm_template),
        "wm": load(datasets.load_mni152_wm_template), "mask": mask,
        "rim": np.clip(4.0 * smooth * (1.0 - smooth), 0.0, 1.0),
        "center": np.array([i.mean() for i in idx]), "extent_mm": extent,
    }


def _rotation(angles: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rx @ ry @ rz


def subject_anatomy(subject_index: int, n_slices: int, crop_size: int, seed: int,
                    warp: bool = True) -> dict[str, np.ndarray]:
    """Tissue maps of one subject's axial slab, each [n_slices, crop, crop] float32.

    Keys: ``t1`` (template intensity), ``gm``, ``wm``, ``csf`` (fractions), ``rim``
    (enhancing surface weight), ``z_mm`` (slice positions in template voxels). The same seed
    gives the same subject; ``warp=False`` keeps the slab but drops the deformation.
    """
    tpl = _template()
    rng = np.random.default_rng([seed, subject_index, 0])
    angles = np.deg2rad(rng.uniform(-5.0, 5.0, 3))
    scales = rng.uniform(0.94, 1.06, 3)
    shift = np.array([*rng.uniform(-3.0, 3.0, 2), 0.0])
    elastic = rng.normal(0.0, 2.0, (3, 6, 6, 6))  # mm, on a coarse 6^3 grid
    spacing = min(rng.uniform(*SPACING_MM), (Z_RANGE[1] - Z_RANGE[0]) / max(n_slices - 1, 1))
    z0 = rng.uniform(Z_RANGE[0], Z_RANGE[1] - spacing * (n_slices - 1))
    z = z0 + spacing * np.arange(n_slices)

    zoom = HEAD_FILL * crop_size / tpl["extent_mm"]  # pixels per mm
    mid = (crop_size - 1) / 2.0
    grid = (np.arange(crop_size) - mid) / zoom
    zz, rr, cc = np.meshgrid(z - tpl["center"][2], grid, grid, indexing="ij")
    # radiological view: image left = patient right (+x), anterior (+y) at the top
    offsets = np.stack([-cc.ravel(), -rr.ravel(), zz.ravel()])
    if warp:
        affine = _rotation(angles) @ np.diag(scales)
        points = tpl["center"][:, None] + affine @ offsets + shift[:, None]
        shape = np.array(tpl["mask"].shape, dtype=float)
        coarse = points / (shape[:, None] - 1) * (elastic.shape[1] - 1)
        points = points + np.stack([ndimage.map_coordinates(e, coarse, order=3, mode="nearest")
                                    for e in elastic])
    else:
        points = tpl["center"][:, None] + offsets

    def sample(key: str) -> np.ndarray:
        out = ndimage.map_coordinates(tpl[key], points, order=1, mode="constant", cval=0.0)
        return np.clip(out, 0.0, 1.0).reshape(n_slices, crop_size, crop_size)

    mask = sample("mask")
    gm, wm = sample("gm") * mask, sample("wm") * mask
    total = np.maximum(gm + wm, 1.0)
    gm, wm = gm / total, wm / total
    csf = np.clip(mask - gm - wm, 0.0, None)
    maps = {"t1": sample("t1"), "gm": gm, "wm": wm, "csf": csf, "rim": sample("rim")}
    out = {k: v.astype(np.float32) for k, v in maps.items()}
    out["z_mm"] = z
    return out


# --------------------------------------------------------------------------- contrast

def _signal(t1: float, t2: float, pd: float, seq: Mapping[str, float]) -> float:
    """Spin echo ``PD (1 - e^{-TR/T1}) e^{-TE/T2}``; with TI, inversion recovery (FLAIR)."""
    tr, te = seq["TR"], seq["TE"]
    if "TI" in seq:
        recovery = abs(1.0 - 2.0 * np.exp(-seq["TI"] / t1) + np.exp(-tr / t1))
    else:
        recovery = 1.0 - np.exp(-tr / t1)
    return float(pd * recovery * np.exp(-te / t2))


def contrast_image(anatomy: Mapping[str, np.ndarray], contrast: str,
                   field_strength: float) -> np.ndarray:
    """Noiseless magnitude images [n, crop, crop] of one contrast (simulated from real anatomy).

    Each voxel mixes the tissue signals by its GM/WM/CSF fractions. T1POST approximates
    gadolinium by shortening T1 (``1/T1 += GD_DELTA_R1_PER_MS``) on the surface rim.
    """
    if contrast not in SEQUENCES:
        raise LdpmInputError("embedded.contrasts", f"unknown contrast {contrast!r}",
                             f"use some of {sorted(SEQUENCES)}")
    seq = SEQUENCES[contrast]
    plain = np.zeros_like(anatomy["gm"])
    enhanced = np.zeros_like(anatomy["gm"])
    for tissue, (t1, t2, pd) in TISSUES[float(field_strength)].items():
        plain += anatomy[tissue] * _signal(t1, t2, pd, seq)
        if contrast == "T1POST":
            t1_gd = 1.0 / (1.0 / t1 + GD_DELTA_R1_PER_MS)
            enhanced += anatomy[tissue] * _signal(t1_gd, t2, pd, seq)
    if contrast == "T1POST":
        plain = (1.0 - anatomy["rim"]) * plain + anatomy["rim"] * enhanced
    return plain * (0.7 + 0.3 * anatomy["t1"])


# --------------------------------------------------------------------------- coils

def coil_maps(n_coils: int, shape: tuple[int, int], radius: float,
              rng: np.random.Generator) -> np.ndarray:
    """Smooth complex sensitivities [n_coils, H, W]: Gaussian falloff from coils on a circle.

    Normalised so that the root-sum-of-squares of the maps is exactly 1.
    """
    h, w = shape
    r, c = np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")
    theta = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(n_coils) / n_coils
    maps = []
    for th in theta:
        dist2 = (r - 1.4 * radius * np.sin(th)) ** 2 + (c - 1.4 * radius * np.cos(th)) ** 2
        phase = th + 0.8 * np.pi * (r * np.sin(th) + c * np.cos(th)) / (2 * radius)
        maps.append(np.exp(-dist2 / (2 * (1.2 * radius) ** 2)) * np.exp(1j * phase))
    maps = np.stack(maps)
    return maps / np.sqrt(np.sum(np.abs(maps) ** 2, axis=0))


def _object_phase(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A smooth (quadratic) background phase of the object, ``exp(i phi)``."""
    h, w = shape
    r, c = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    a = rng.uniform(-1, 1, 4) * np.array([np.pi, np.pi / 2, np.pi / 2, np.pi / 4])
    return np.exp(1j * (a[0] + a[1] * r + a[2] * c + a[3] * (r ** 2 + c ** 2)))


def ismrmrd_header(field_strength: float, crop_size: int, n_slices: int, n_coils: int,
                   fov_mm: float, seq: Mapping[str, float]) -> str:
    """A minimal valid ISMRMRD XML header (vendor ``ldpm-embedded``)."""
    timing = "".join(f"<{k}>{v:g}</{k}>" for k, v in seq.items())

    def space(nx: int, fx: float) -> str:
        return (f"<matrixSize><x>{nx}</x><y>{crop_size}</y><z>1</z></matrixSize>"
                f"<fieldOfView_mm><x>{fx:.2f}</x><y>{fov_mm:.2f}</y><z>4.00</z></fieldOfView_mm>")

    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">'
        "<acquisitionSystemInformation><systemVendor>ldpm-embedded</systemVendor>"
        f"<systemFieldStrength_T>{field_strength:.1f}</systemFieldStrength_T>"
        f"<receiverChannels>{n_coils}</receiverChannels></acquisitionSystemInformation>"
        "<experimentalConditions><H1resonanceFrequency_Hz>"
        f"{round(42.577478e6 * field_strength)}</H1resonanceFrequency_Hz>"
        "</experimentalConditions>"
        f"<encoding><encodedSpace>{space(2 * crop_size, 2 * fov_mm)}</encodedSpace>"
        f"<reconSpace>{space(crop_size, fov_mm)}</reconSpace>"
        "<encodingLimits><kspace_encoding_step_1><minimum>0</minimum>"
        f"<maximum>{crop_size - 1}</maximum><center>{crop_size // 2}</center>"
        "</kspace_encoding_step_1><slice><minimum>0</minimum>"
        f"<maximum>{n_slices - 1}</maximum><center>0</center></slice></encodingLimits>"
        "<trajectory>cartesian</trajectory></encoding>"
        f"<sequenceParameters>{timing}</sequenceParameters></ismrmrdHeader>"
    )


def write_multicoil_file(path: str | Path, images: np.ndarray, sens: np.ndarray, phase: np.ndarray,
                         sigma: float, rng: np.random.Generator, header: str,
                         attrs: Mapping[str, Any]) -> Path:
    """Scan ``images`` [S, crop, crop] (real, >= 0) with coils ``sens`` [C, 2*crop, crop] and the
    object phase ``phase`` [2*crop, crop] into one fastMRI multicoil file, atomically.

    Each slice is placed at the centre of the 2x-oversampled readout, ``kspace[s, c] =
    fft2c(obj * phase * sens_c) + n`` with complex Gaussian noise of ``E|n|^2 = sigma^2``; the file also
    holds ``reconstruction_rss``, ``ismrmrd_header`` and the attrs fastMRI files carry (``max``,
    ``norm``, plus ``attrs``).
    """
    n_slices, crop_size = images.shape[0], images.shape[-1]
    full = sens.shape[1:]
    top = (full[0] - crop_size) // 2  # where the reader's center crop will look
    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        kspace = f.create_dataset("kspace", (n_slices, sens.shape[0], *full), dtype=np.complex64)
        recon = np.empty((n_slices, crop_size, crop_size), dtype=np.float32)
        for s in range(n_slices):
            obj = np.zeros(full, dtype=np.complex128)
            obj[top:top + crop_size] = images[s]
            k = fft2c(obj * phase * sens)
            noise = rng.normal(0.0, sigma / np.sqrt(2), (2, *k.shape))
            k = (k + noise[0] + 1j * noise[1]).astype(np.complex64)
            kspace[s] = k
            recon[s] = rss_target(k, crop_size)
        f.create_dataset("reconstruction_rss", data=recon)
        f.create_dataset("ismrmrd_header", data=np.bytes_(header.encode()))
        f.attrs.update({**attrs, "max": float(recon.max()), "norm": float(np.linalg.norm(recon)),
                        "ldpm_source": attrs.get("ldpm_source", SOURCE)})
    return path


# --------------------------------------------------------------------------- build

def build_subject(subject_index: int, out_dir: str | Path, embedded_cfg: Mapping[str, Any],
                  crop_size: int, drop_last_slices: int, seed: int) -> list[Path]:
    """Write all volumes of one subject (one per contrast) as fastMRI multicoil files.

    Every volume has ``slices_per_volume + drop_last_slices`` slices, k-space
    [slices, n_coils, 2*crop, crop] complex64 (image zero-padded to 2x readout oversampling).
    ``kspace[s, c] = fft2c(img * sens_c) + n`` with complex Gaussian noise ``n`` of
    ``E|n|^2 = sigma^2``, ``sigma = noise_std * max|img| * max|sens|`` (the peak coil-image
    magnitude, or a bound on it); the FFT is unitary, so sigma is also the per-pixel noise of
    each coil image, whatever the matrix size. Writes are atomic.
    """
    n_subjects = int(embedded_cfg["n_subjects"])
    if not 0 <= subject_index < n_subjects:
        raise LdpmInputError("embedded.n_subjects", f"subject {subject_index} is out of range",
                             f"use a subject index in 0..{n_subjects - 1}")
    n_slices = int(embedded_cfg["slices_per_volume"]) + int(drop_last_slices)
    n_coils = int(embedded_cfg["n_coils"])
    field_strength = subject_field_strength(embedded_cfg, subject_index)
    anatomy = subject_anatomy(subject_index, n_slices, crop_size, seed)
    full = (2 * crop_size, crop_size)
    sens = coil_maps(n_coils, full, crop_size / 2, np.random.default_rng([seed, subject_index, 1]))
    fov_mm = _template()["extent_mm"] / HEAD_FILL

    out_dir = Path(out_dir)
    paths = []
    for contrast, name in zip(embedded_cfg["contrasts"],
                              subject_volume_names(embedded_cfg, subject_index)):
        rng = np.random.default_rng([seed, subject_index, 2, zlib.crc32(contrast.encode())])
        image = contrast_image(anatomy, contrast, field_strength)
        image = image * (SIGNAL_SCALE / max(float(image.max()), 1e-12))
        phase = _object_phase(full, rng)
        sigma = float(embedded_cfg["noise_std"]) * float(image.max()) * float(np.abs(sens).max())
        header = ismrmrd_header(field_strength, crop_size, n_slices, n_coils, fov_mm,
                                SEQUENCES[contrast])
        path = write_multicoil_file(out_dir / f"{name}.h5", image, sens, phase, sigma,
                                    rng, header, {"acquisition": f"AX{contrast}",
                                             "patient_id": subject_name(subject_index)})
        paths.append(path)
    return paths
