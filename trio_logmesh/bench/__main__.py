"""``python -m trio_logmesh.bench KIND JSON_PARAMS``: run one trial, print its JSON result."""

import json
import sys

from ._hosts import HOST_TRIALS
from ._trials import TRIALS

kind, params = sys.argv[1:]
print(json.dumps({**TRIALS, **HOST_TRIALS}[kind](**json.loads(params))))
