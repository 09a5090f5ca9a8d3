"""`ldpm preprocess` against the naive whole-volume route, on one generated fastMRI-sized file.

    python benchmarks/bench_preprocess.py [--slices 16] [--coils 16] [--height 640] [--width 320]
        [--repeats 3] [--dir /tmp]

Writes one fastMRI-format multicoil file (random complex64 k-space, a valid ISMRMRD header),
then times, each in its own one-thread process, (a) ldpm's preprocessing
(:func:`ldpm.data.store.preprocess_volume`: slice by slice, RSS, centre crop, last 3 slices
dropped) and (b) the reference: read the whole ``kspace`` with h5py, one numpy centred inverse
FFT of the volume, RSS over the coils. Printed: median wall seconds of each, their ratio
(ldpm / reference; ldpm should stay at or below 1) and each process's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

from ldpm.data.embedded import ismrmrd_header

#: each side runs in a fresh process and prints {"seconds", "peak_mib"} of its work
CHILD = {
    "ldpm preprocess": """
from ldpm.data.store import preprocess_volume
t0 = time.perf_counter()
preprocess_volume(src, out, crop_size=crop, drop_last_slices=3)
""",
    "h5py read + numpy FFT + RSS (whole volume)": """
import h5py, numpy as np
t0 = time.perf_counter()
with h5py.File(src, "r") as f:
    k = f["kspace"][()]
axes = (-2, -1)
img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=axes), axes=axes, norm="ortho"), axes=axes)
rss = np.sqrt((np.abs(img) ** 2).sum(axis=1))
""",
}
PRELUDE = "import json, resource, sys, time\nsrc, out, crop = sys.argv[1], sys.argv[2], int(sys.argv[3])\n"
REPORT = ("\nprint(json.dumps({'seconds': time.perf_counter() - t0, "
          "'peak_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n")


def write_volume(path: Path, slices: int, coils: int, height: int, width: int) -> Path:
    """A fastMRI-format multicoil file of random k-space, written slice by slice."""
    rng = np.random.default_rng(0)
    header = ismrmrd_header(3.0, width, slices, coils, 220.0, {"TR": 9000.0, "TE": 100.0})
    with h5py.File(path, "w") as f:
        k = f.create_dataset("kspace", (slices, coils, height, width), dtype=np.complex64)
        for s in range(slices):
            k[s] = (rng.standard_normal((coils, height, width), dtype=np.float32)
                    + 1j * rng.standard_normal((coils, height, width), dtype=np.float32))
        f.create_dataset("ismrmrd_header", data=np.bytes_(header.encode()))
        f.attrs.update({"acquisition": "AXT2", "patient_id": "bench"})
    return path


def run_child(code: str, src: Path, out: Path, crop: int) -> dict[str, float]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", PRELUDE + code + REPORT, str(src), str(out), str(crop)],
                          capture_output=True, text=True, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=16)
    ap.add_argument("--coils", type=int, default=16)
    ap.add_argument("--height", type=int, default=640)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where the generated file goes (default: a temp dir)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        src = write_volume(Path(tmp) / "file_brain_AXT2_bench.h5", a.slices, a.coils, a.height, a.width)
        size_mib = src.stat().st_size / 2**20
        runs = {name: [run_child(code, src, Path(tmp) / f"out{i}.h5", a.width) for i in range(a.repeats)]
                for name, code in CHILD.items()}
    med = {name: statistics.median(r["seconds"] for r in rs) for name, rs in runs.items()}
    peak = {name: max(r["peak_mib"] for r in rs) for name, rs in runs.items()}
    ours, ref = CHILD
    print(f"volume: {a.slices} slices x {a.coils} coils x {a.height} x {a.width} complex64 "
          f"({size_mib:.0f} MiB), one thread per process, median of {a.repeats}")
    print(f"{'route':44s} {'wall s':>8s} {'peak MiB':>9s}")
    for name in CHILD:
        print(f"{name:44s} {med[name]:8.2f} {peak[name]:9.0f}")
    print(f"ldpm preprocess / reference: wall {med[ours] / med[ref]:.2f}x, "
          f"peak memory {peak[ours] / peak[ref]:.2f}x (target: wall <= 1.0x)")


if __name__ == "__main__":
    main()
