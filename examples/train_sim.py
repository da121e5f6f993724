"""A fake multi-rank training loop: logging, print, warnings, a progress bar, a failing rank.

Run it under the mesh:  logmesh run -n 4 --window 2 --level INFO -- python3 examples/train_sim.py
Every rank prints much the same thing, which is what aggregation is for; the last rank
fails at the end so you can see how a failure is reported.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import time
import warnings

rank = int(os.environ.get("RANK", "0"))
world = int(os.environ.get("WORLD_SIZE", "1"))
steps = int(os.environ.get("TRAIN_SIM_STEPS", "30"))
fail = os.environ.get("TRAIN_SIM_FAIL", "1") == "1"
delay = float(os.environ.get("TRAIN_SIM_DELAY", "0.05"))

logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
log = logging.getLogger("train")
rng = random.Random(rank)

log.info("rank %d of %d starting (pid %d)", rank, world, os.getpid())
for shard in range(1, 5):
    print(f"Loading shard {shard}/4 on rank {rank}")
    time.sleep(delay)
warnings.warn(f"rank {rank}: learning rate schedule ignores warmup", UserWarning, stacklevel=1)

try:
    from tqdm import tqdm
except ImportError:  # the bar is optional
    tqdm = None

loss = 2.0 + rng.random()
bar = tqdm(total=steps, desc=f"epoch 0 rank {rank}", file=sys.stderr) if tqdm else None
for step in range(steps):
    loss *= 0.93 + 0.02 * rng.random()
    print(f"step {step} loss {loss:.4f} lr 3e-4")
    if step % 10 == 0:
        log.info("checkpoint at step %d", step)
    if bar is not None:
        bar.update(1)
    time.sleep(delay)
if bar is not None:
    bar.close()

print(f"rank {rank} done, final loss {loss:.4f}")
if fail and rank == world - 1 and world > 1:
    raise RuntimeError(f"rank {rank}: simulated failure after training")
