"""Exceptions users of trio_logmesh may catch."""

from __future__ import annotations


class LogmeshError(Exception):
    """Base class of trio_logmesh's own errors."""


class FlushTimeout(LogmeshError):
    """``flush(timeout=...)`` gave up before every rank acknowledged the barrier.

    ``missing_ranks`` lists the ranks whose output may not all have arrived (a frozen or
    hung process, typically); every other rank's output up to the barrier was delivered.
    """

    def __init__(self, version: int, missing_ranks: list[int], timeout: float) -> None:
        self.version = version
        self.missing_ranks = missing_ranks
        self.timeout = timeout
        ranks = ", ".join(str(r) for r in missing_ranks)
        super().__init__(
            f"flush timed out after {timeout:g} s: no acknowledgement from rank(s) {ranks} "
            "(stopped, hung or blocked processes?)"
        )
