"""The one exception type users see for bad input: it always names the file or key and the fix."""

from __future__ import annotations


class LdpmInputError(ValueError):
    """Bad input (file, array or config). The message names what is wrong and what to do."""

    def __init__(self, where: str, problem: str, fix: str):
        self.where, self.problem, self.fix = str(where), problem, fix
        super().__init__(f"{where}: {problem}. Fix: {fix}")
