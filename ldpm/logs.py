"""Warnings that the library expects (a third-party deprecation, TorchScript's pickle notes) are
collected around the call that raises them and logged once per distinct message, never
swallowed: :func:`warnings_once`."""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterator

log = logging.getLogger(__name__)
_SEEN: set[str] = set()


@contextlib.contextmanager
def warnings_once(context: str) -> Iterator[None]:
    """Run the block with its warnings recorded; log each distinct one (category and message)
    once per process as ``"<context>: <Category>: <message>"`` at WARNING level."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        text = f"{context}: {w.category.__name__}: {w.message}"
        if text not in _SEEN:
            _SEEN.add(text)
            log.warning(text)
