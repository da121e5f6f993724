"""Write the folding corpus: realistic output of multi-rank jobs, one file per rank.

    python3 tests/corpus/make.py

Deterministic (a fixed seed); the files are checked in, this script documents where they
came from.  Tracebacks are real: raised here and formatted by the traceback module.
"""

from __future__ import annotations

import io
import json
import logging
import random
import shutil
import traceback
from pathlib import Path

HERE = Path(__file__).parent


def _traceback(fn) -> str:  # type: ignore[no-untyped-def]
    try:
        fn()
    except BaseException:  # noqa: BLE001 - any exception: we want its printout
        return _neutral(traceback.format_exc().rstrip("\n"))
    raise AssertionError("no exception")


def _neutral(text: str) -> str:
    """The tracebacks as a user's job would print them, not naming this checkout."""
    return text.replace(str(Path(__file__).resolve()), "/home/user/job/train.py")


def _load_shard(i: int) -> None:
    raise FileNotFoundError(f"/data/shard_{i:04d}.bin")


def _chained(i: int) -> None:
    try:
        _load_shard(i)
    except FileNotFoundError as exc:
        raise RuntimeError(f"cannot build the dataset for rank {i}") from exc


def _group() -> None:
    raise ExceptionGroup("2 workers failed", [ValueError("bad batch"), KeyError("label")])


def startup(rng: random.Random, ranks: int = 8) -> list[list[str]]:
    out = []
    for r in range(ranks):
        version = {6: "2.1.0", 7: "2.10.2"}.get(r, "2.3.1")
        lines = [
            f"torch {version}+cu121 python 3.11.7",
            "MASTER_ADDR=10.0.0.1 MASTER_PORT=29500",
            f"rank {r} listening on 10.0.0.{1 + r // 4}:{29500 + r % 4}",
            f"CUDA_VISIBLE_DEVICES={'0,1,2,3' if r < 4 else '4,5,6,7'}",
            f"using device cuda:{r % 4}",
            f"[rank{r}]:[I1123 15:31:58.{rng.randrange(10**6):06d} ProcessGroupNCCL.cpp:1306] "
            f"[PG 0 Rank {r}] ProcessGroupNCCL initialization options: size: {ranks}",
        ]
        kind = "FutureWarning" if r == 3 else "UserWarning"
        lines += [
            f"/opt/conda/lib/python3.11/site-packages/torch/optim/lr_scheduler.py:143: {kind}: "
            "Detected call of `lr_scheduler.step()` before `optimizer.step()`.",
            '  warnings.warn("Detected call of `lr_scheduler.step()` before `optimizer.step()`.")',
            f"model has {124_439_808:,} parameters",
        ]
        out.append(lines)
    return out


def training(rng: random.Random, ranks: int = 8, steps: int = 30) -> list[list[str]]:
    out = []
    for r in range(ranks):
        loss = 2.8 + rng.uniform(-0.05, 0.05)
        lines = []
        for s in range(steps):
            loss = loss * 0.93 + rng.uniform(-0.02, 0.02)
            lines.append(f"step {s} loss {loss:.4f} lr 3.0e-04 grad_norm {rng.uniform(0.5, 2):.2f}")
            if s % 10 == 9:
                lines.append(f"throughput {rng.uniform(9000, 12000):.1f} tokens/s "
                             f"mem {rng.randrange(30000, 40000)}MiB")
                lines.append(json.dumps({"step": s, "loss": round(loss, 4), "rank": r}))
                if r == 0:
                    lines.append(f"saving checkpoint to /ckpt/step_{s:06d}.pt")
        out.append(lines)
    return out


def evaluation(rng: random.Random, ranks: int = 4) -> list[list[str]]:
    out = []
    for r in range(ranks):
        lines = [f"eval acc {rng.uniform(0.7, 0.8):.4f} on {1000 + 10 * r} samples"]
        if r == 0:
            lines.append("per-class accuracy:")
            lines += [f"  class {c}: acc {rng.uniform(0.1, 0.99):.2f}" for c in range(1, 6)]
        lines.append("eval done")
        out.append(lines)
    return out


def failures(rng: random.Random, ranks: int = 8) -> list[list[str]]:
    same = _traceback(lambda: _load_shard(7))
    out = []
    for r in range(ranks):
        lines = [f"rank {r} loading data"]
        if r < 4:
            text = same
        elif r < 6:
            text = _traceback(lambda r=r: _chained(r))
        elif r == 6:
            buf = io.StringIO()
            log = logging.getLogger(f"corpus{r}")
            handler = logging.StreamHandler(buf)
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            log.addHandler(handler)
            log.propagate = False
            try:
                _load_shard(r)
            except FileNotFoundError:
                log.exception("data loader crashed on rank %d", r)
            text = _neutral(buf.getvalue().rstrip("\n"))
        else:
            text = _traceback(_group)
        lines += text.split("\n")
        out.append(lines)
    return out


def progress(rng: random.Random, ranks: int = 4) -> list[list[str]]:
    out = []
    for r in range(ranks):
        n = 28 if r == 3 else 100
        bar = ("█" * (n // 10) + ("▊" if n % 10 else "")).ljust(10)
        rate = rng.uniform(9, 10)
        lines = [f"epoch 0: {n:3d}%|{bar}| {n}/100 [00:{n // 10:02d}<00:{(100 - n) // 10:02d}, "
                 f"{rate:5.2f}it/s]"]
        out.append(lines)
    return out


SCENARIOS = {
    "startup": startup,
    "training": training,
    "evaluation": evaluation,
    "failures": failures,
    "progress": progress,
}


def main() -> None:
    """Write every scenario under tests/corpus/<name>/rank-N.txt."""
    for name, make in SCENARIOS.items():
        where = HERE / name
        shutil.rmtree(where, ignore_errors=True)
        where.mkdir()
        for r, lines in enumerate(make(random.Random(name))):
            (where / f"rank-{r}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
