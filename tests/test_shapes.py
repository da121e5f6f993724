"""Templates: which lines are the same kind, and what their fields are."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_logmesh.view._shapes import ANSI, TO_ZERO, ShapeCache, lift, parse, template_of


@pytest.mark.parametrize(
    ("line", "template"),
    [
        ("step 12 loss 0.5321 lr 3e-4", "step <num> loss <num> lr <num>"),
        ("loss=-0.5 a-1 1.5e+10", "loss=<num> <tok> <num>"),
        ("Loading shard 3/16", "Loading shard <num>/<num>"),
        ("step 5/100, loss=0.41;", "step <num>/<num>, loss=<num>;"),
        ("epoch 3: loss -0.25.", "epoch <num>: loss <num>."),
        ("100% done", "<num>% done"),
        ("mem 32768MiB at 9.91it/s in 120ms", "mem <num>MiB at <num>it/s in <num>ms"),
        # Words holding a digit are tokens, kept whole: never a range inside them.
        ("rank3 cuda:0 conv2d", "<tok> <tok> <tok>"),
        ("torch version 2.10.2+cu121", "torch version <tok>"),
        ("master 10.0.0.1:29500.", "master <tok>."),
        ("CUDA_VISIBLE_DEVICES=2,3,4,5", "CUDA_VISIBLE_DEVICES=<tok>"),
        ("at 0x7f3a2c10 and 0X1F", "at <tok> and <tok>"),
        ("sha e3b0c44298fc1c14 word deadbeef", "sha <tok> word deadbeef"),
        ("id 1b4e28ba-2fa1-11d2-883f-0016d3cca427 done", "id <tok> done"),
        ("1,234 lines", "<tok> lines"),
        ("12345678 is a number", "<num> is a number"),
        # Times.
        ("2024-11-23T15:31:58.123Z start", "<time> start"),
        ("2024-11-23 15:31:58,001 INFO x", "<time> INFO x"),
        ("I1123 15:31:58.123456 x.cpp:12]", "<tok> <time> <tok>]"),
        ("took 0:00:05 or 12:34", "took <time> or <tok>"),
        # Progress bars.
        ("train:  28%|██▊       | 28/100 [00:03<00:07]", "train:<bar> <num>/<num> [<tok><<tok>]"),
        ("\x1b[1;32mok\x1b[0m 5", "ok <num>"),
        ("\x1b]0;title\x07plain", "plain"),
        ("no fields here", "no fields here"),
        ("", ""),
    ],
)
def test_template_of_masks_variable_fields(line: str, template: str) -> None:
    assert template_of(line) == template


_token = st.sampled_from(
    ["0", "7", "19", "2024", "-", ":", ".", ",", " ", "x", "X", "a", "f", "e", "T", "Z", "+",
     "/", "=", "%", "|", "█"]
    + ["2024-01-02", "12:34:56", "0x7f", "deadbeef", "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
       " 50%|█████     |"]
)


@given(st.one_of(st.text(), st.lists(_token, max_size=30).map("".join)))
def test_template_keeps_no_digit_and_ignores_digit_values(line: str) -> None:
    t = template_of(line)
    assert not re.search(r"[0-9]", t)
    # Masking the shape (digits -> 0) gives what masking the line itself gives, so one cached
    # shape stands for every line with digits in the same places.
    clean = ANSI.sub("", line)
    assert parse(clean)[0].text == t
    assert template_of(re.sub(r"[0-9]", "7", line)) == t
    # The fields' spans are the same on the shape and on the line: values are slices.
    assert parse(clean)[1] == parse(clean.translate(TO_ZERO))[1]


@given(st.lists(st.sampled_from(["step 1 loss 0.5", "step 22 loss 0.5", "eval 3", "x"]),
                min_size=1, max_size=60))
def test_segments_give_every_line_its_own_shape(lines: list[str]) -> None:
    cache = ShapeCache()
    shapes = "".join(ln.translate(TO_ZERO) + "\n" for ln in lines)
    segments = cache.segments(shapes, len(lines), "\n")
    assert segments is not None
    got: list[str] = [""] * len(lines)
    for info, a, k, reps, period in segments:
        for t in range(reps):
            for i in range(a + t * period, a + t * period + k):
                assert not got[i]
                got[i] = info.reps[0][:-1]
    assert got == [ln.translate(TO_ZERO) for ln in lines]


@pytest.mark.parametrize(("copies", "limit"), [(0, 64), (1, 64), (5, 8), (1000, 64), (77, 4)])
def test_lift_counts_the_copies_exactly(copies: int, limit: int) -> None:
    unit = "ab\n"
    s = unit * copies + "zz\n"
    n, pos = lift(s, 0, [unit], len(s), limit)
    assert (n, pos) == (copies, copies * len(unit))
