"""Atomic file writes: every output is written to a temporary sibling, then renamed.

A crash or a bad input therefore never leaves a half-written file under its final name. The
renamed file gets the mode a plain ``open(path, "w")`` would give it (``0o666`` less the umask),
not ``mkstemp``'s private ``0o600``. A crash can leave a temporary sibling
(``.NAME.XXXXXXXX.tmp``) behind; :func:`remove_stale_temps` removes those.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator


def progress(total: int, desc: str, unit: str = "slice"):
    """A progress bar on stderr for a long loop (``bar.update(n)`` as work is done): redrawn at
    most once a second in a terminal and once a minute in a log file, so a cluster job's log
    shows what is done, the rate and the time left without filling up."""
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False,
                mininterval=1.0 if sys.stderr.isatty() else 60.0)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    except PermissionError as e:  # name the output, not the random temporary name
        raise PermissionError(e.errno, e.strerror, str(final)) from e
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, umask_mode(0o666))
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def current_umask() -> int:
    """This process's umask (read from /proc where it can be, so it is never changed)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_mode(mode: int) -> int:
    """``mode`` less the umask: what ``open``/``mkdir`` give a new file (0o666) or folder (0o777)."""
    return mode & ~current_umask()


def remove_stale_temps(folder: str | os.PathLike, names) -> list[Path]:
    """Remove the temporary siblings :func:`atomic_path` made for ``folder/NAME`` (each NAME in
    ``names``) and a crash left behind: files ``.NAME.XXXXXXXX.tmp``; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = re.compile(r"\.(%s)\.[A-Za-z0-9_]{8}\.tmp" % "|".join(re.escape(n) for n in names))
    removed = []
    for p in sorted(folder.iterdir()):
        if pattern.fullmatch(p.name) and p.is_file() and not p.is_symlink():
            p.unlink()
            removed.append(p)
    return removed


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


@contextlib.contextmanager
def open_hdf5(path: str | os.PathLike, what: str = "HDF5 file",
              missing_fix: str = "run the step that writes it first",
              unreadable_fix: str = "rebuild it (or re-download it): it is truncated or not HDF5"
              ) -> Iterator["h5py.File"]:  # noqa: F821
    """Open ``path`` read-only with h5py.

    A missing file, or one that h5py cannot open or read (truncated, not HDF5), raises
    :class:`ldpm.errors.LdpmInputError` naming it; an OSError while the body reads the open
    file is turned into the same error.
    """
    import h5py

    from .errors import LdpmInputError

    path = Path(path)
    if not path.is_file():
        raise LdpmInputError(path, f"{what} not found", missing_fix)

    def refused(e: OSError) -> LdpmInputError:
        if isinstance(e, PermissionError):
            return LdpmInputError(path, f"{what} cannot be read (permission denied)",
                                  "give this user read access to it (chmod/chown)")
        return LdpmInputError(path, f"{what} is not a readable HDF5 file ({_one_line(e)})",
                              unreadable_fix)

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise refused(e) from e
    try:
        with f:
            yield f
    except OSError as e:
        raise refused(e) from e
