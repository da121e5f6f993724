"""Start logmesh's agent, then run any other ``sitecustomize`` as usual.

The mesh puts this directory first on ``PYTHONPATH`` of the Python children it launches and sets
``LOGMESH_AGENT``; the interpreter imports this module before the user's code, which therefore
runs unchanged.  Anything that goes wrong here is reported on stderr and never stops the child.
"""

import os
import sys


def _start_agent() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    if os.environ.pop("LOGMESH_AGENT", None) != "1":
        return
    try:
        sys.path.insert(0, here)
        try:
            import _logmesh_agent
        finally:
            sys.path.remove(here)
        _logmesh_agent.start()
    except Exception as exc:  # never break the user's program
        sys.stderr.write(f"logmesh: agent not started (barriers will not flush this process's buffers): {exc!r}\n")


def _chain() -> None:
    # We shadow any sitecustomize further down sys.path: import that one too.
    here = os.path.dirname(os.path.abspath(__file__))
    saved = sys.path[:]
    me = sys.modules.pop("sitecustomize", None)
    try:
        sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
        try:
            import sitecustomize  # noqa: F401
        except ImportError:
            pass
    finally:
        sys.path[:] = saved
        if me is not None:
            sys.modules["sitecustomize"] = me


_start_agent()
_chain()
