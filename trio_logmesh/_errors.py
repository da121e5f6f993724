"""Exceptions users of trio_logmesh may catch, and how teardown errors meet the user's own."""

from __future__ import annotations

import trio


class LogmeshError(Exception):
    """Base class of trio_logmesh's own errors."""


class ClientClosed(LogmeshError):
    """The client was closed (``aclose()``, or its nursery ended) while ranks still ran."""


class ClientReplaced(LogmeshError):
    """A newer client took the mesh's live view over; this one gets nothing more."""


class FlushTimeout(LogmeshError):
    """``flush(timeout=...)`` gave up before every rank acknowledged the barrier.

    ``missing_ranks`` lists the ranks whose output may not all have arrived; every other
    rank's output up to the barrier was delivered.  ``reasons`` maps each missing rank to the
    host's account of it (``"is stopped (SIGSTOP, Ctrl-Z or a debugger)"``, ``"did not answer
    the flush request for 2.0 s (busy or blocked)"``, ...).
    """

    def __init__(
        self,
        version: int,
        missing_ranks: list[int],
        timeout: float,
        reasons: dict[int, str] | None = None,
    ) -> None:
        self.version = version
        self.missing_ranks = missing_ranks
        self.timeout = timeout
        self.reasons = dict(reasons or {})
        if missing_ranks:
            detail = "; ".join(
                f"rank {r} {self.reasons[r]}" if r in self.reasons else f"rank {r}"
                for r in missing_ranks[:8]
            )
            more = f" (and {len(missing_ranks) - 8} more)" if len(missing_ranks) > 8 else ""
            what = f"no acknowledgement from {detail}{more}"
        else:
            what = "the sink did not take the output in time"
        super().__init__(f"flush timed out after {timeout:g} s: {what}")


class HostLost(FlushTimeout):
    """One or more hosts of a run over many hosts were lost: their agent died, or was not
    heard from for ``dead_after`` seconds.

    Raised at once by a pending ``flush()`` (and by every later one), and by
    ``HostMesh.wait()``/``wait_rank()`` for ranks whose exit will never be known.
    ``missing_hosts`` maps each lost host to what happened to it; ``missing_ranks`` are the
    ranks whose output or exit may not all have arrived (their hosts' ranks, and in a flush
    any other rank that had not answered yet); ``reasons`` says why, per rank.
    """

    def __init__(
        self,
        missing_hosts: dict[str, str],
        missing_ranks: list[int],
        version: int = 0,
        reasons: dict[int, str] | None = None,
    ) -> None:
        self.missing_hosts = dict(missing_hosts)
        LogmeshError.__init__(self)  # the message is ours, not FlushTimeout's
        self.version = version
        self.missing_ranks = list(missing_ranks)
        self.timeout = 0.0
        self.reasons = dict(reasons or {})
        hosts = "; ".join(f"host {h} was lost ({why})" for h, why in sorted(missing_hosts.items()))
        ranks = ", ".join(map(str, missing_ranks[:8]))
        more = f" and {len(missing_ranks) - 8} more" if len(missing_ranks) > 8 else ""
        self.args = (f"{hosts}: ranks {ranks}{more} may be incomplete",)


def leaf_errors(exc: BaseException) -> list[BaseException]:
    """The exceptions in ``exc`` (groups flattened), without trio's ``Cancelled``."""
    if isinstance(exc, BaseExceptionGroup):
        return [e for sub in exc.exceptions for e in leaf_errors(sub)]
    return [] if isinstance(exc, trio.Cancelled) else [exc]


def surface(body_error: BaseException | None, errors: list[BaseException]) -> BaseException | None:
    """The exception to raise out of an ``async with`` whose body raised ``body_error`` (or
    nothing) and whose teardown or background tasks raised ``errors``.

    The body's own exception always wins; the others are attached to it as notes (in the
    manner of ``trio.as_safe_channel``).  A ``Cancelled`` body -- cancelled because a
    background task failed -- gives way to those failures: one is raised as itself, several
    as an ``ExceptionGroup``.
    """
    if body_error is not None and not isinstance(body_error, trio.Cancelled):
        for error in errors:
            if error is not body_error:
                body_error.add_note(f"trio_logmesh: while closing, also: {error!r}")
        return body_error
    if len(errors) == 1:
        return errors[0]
    if errors:
        if all(isinstance(e, Exception) for e in errors):
            return ExceptionGroup("trio_logmesh: several errors", errors)  # type: ignore[arg-type]
        return BaseExceptionGroup("trio_logmesh: several errors", errors)
    return body_error
