"""Start logmesh's agent, then run any other ``sitecustomize`` as usual.

The mesh puts this directory first on ``PYTHONPATH`` of every rank and sets ``LOGMESH_AGENT``:
the first Python process a rank starts -- ``python train.py``, a shebang script, ``env
python3``, a shell script's ``python`` -- imports this module before the user's code, which
runs unchanged.  Any Python may meet this file, so it is written to parse on old ones too and
starts the agent on Python 3.8 and newer only.  Anything that goes wrong here is reported on
stderr and never stops the program.
"""

import os
import sys


def _start_agent():
    here = os.path.dirname(os.path.abspath(__file__))
    if os.environ.pop("LOGMESH_AGENT", None) != "1" or sys.version_info < (3, 8):
        return
    try:
        sys.path.insert(0, here)
        try:
            import _logmesh_agent
        finally:
            sys.path.remove(here)
        _logmesh_agent.start()
    except Exception as exc:  # never break the user's program
        sys.stderr.write(
            "logmesh: agent not started (barriers will not flush this process's buffers): "
            + repr(exc) + "\n"
        )


def _chain():
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
