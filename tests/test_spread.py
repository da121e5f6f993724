"""How a folded field shows its values: exactly, and never a value no line held."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_logmesh.view._spread import MAX_DISTINCT, SHOWN, FieldValues


def shown(kind: str, values: list[str], ranks: list[int] | None = None) -> str:
    fv = FieldValues(kind)
    for i, v in enumerate(values):
        fv.add(v, ranks[i] if ranks is not None else 100 + i)
    return fv.render()


@pytest.mark.parametrize(
    ("kind", "values", "want"),
    [
        ("num", ["0.5", "0.4290", "0.4100", "0.43"], "0.4100..0.5"),
        ("num", ["7", "7", "7"], "7"),
        ("num", ["1.0", "1.00", "1"], "1.0"),  # equal numbers: the first as written
        ("num", ["-3", "-10", "2"], "-10..2"),
        ("num", ["3e-4", "1e-3", "2e-5"], "2e-5..1e-3"),
        ("num", ["99", "100", "1000000000000000000001"], "99..1000000000000000000001"),
        ("tok", ["2.3.1", "2.1.0", "2.10.2", "2.3.1"], "{2.3.1|2.1.0|2.10.2}"),
        ("tok", ["a1", "b2", "c3", "d4"], "{a1|b2|c3|d4}"),
        ("tok", ["a1", "b2", "c3", "d4", "e5", "f6"], "{a1|b2|c3|+3 more}"),
        ("tok", ["10.0.0.1:29500", "10.0.0.3:29501"], "{10.0.0.1:29500|10.0.0.3:29501}"),
        ("time", ["10:00:01", "09:59:59", "10:00:03"], "09:59:59..10:00:03"),
        ("bar", [" 28%|██▊       |", "100%|██████████|", " 57%|█████▋    |"], " 28%|██▊       |"),
    ],
)
def test_fields_show_exact_values(kind: str, values: list[str], want: str) -> None:
    assert shown(kind, values) == want


def test_the_rank_itself_is_named_not_ranged() -> None:
    assert shown("num", ["0", "1", "2", "3"], [0, 1, 2, 3]) == "{rank}"
    assert shown("num", ["0", "1", "2", "4"], [0, 1, 2, 3]) == "0..4"
    assert shown("tok", ["cuda:0", "cuda:1", "cuda:12"], [0, 1, 12]) == "cuda:{rank}"
    assert shown("tok", ["gpu0-x1", "gpu1-x1"], [0, 1]) == "gpu{rank}-x1"
    assert shown("tok", ["r11", "r12"], [1, 2]) == "{r11|r12}"  # "1" in "11" is not the rank
    assert shown("num", ["3", "3"], [3, 3]) == "3"  # one rank: just its value


def test_runs_of_one_shape_compare_as_text_correctly() -> None:
    fv = FieldValues("num")
    fv.add_run(["-0.5", "-1.5", "-0.2"], 0)  # one shape, negative: text order reversed
    fv.add_run(["0.7", "0.1"], 1)
    assert fv.render() == "-1.5..0.7"
    fv = FieldValues("num")
    fv.add_run(["9e-4", "1e-3"], 0)  # exponents: compared as numbers
    assert fv.render() == "9e-4..1e-3"


def test_many_distinct_tokens_are_counted_up_to_a_bound() -> None:
    fv = FieldValues("tok")
    fv.add_run([f"id{i}x" for i in range(MAX_DISTINCT + 10)], 5)
    assert fv.render().endswith(f"|+{MAX_DISTINCT - SHOWN} or more}}")


_number = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.floats(-1e6, 1e6, allow_nan=False).map(lambda f: f"{f:.3f}"),
)


@given(st.lists(_number, min_size=1, max_size=40))
def test_a_numeric_range_is_the_exact_min_and_max_as_printed(values: list[str]) -> None:
    text = shown("num", values)
    if ".." in text:
        lo, hi = text.split("..")
        assert lo in values and hi in values
        assert float(lo) == min(map(float, values)) and float(hi) == max(map(float, values))
    else:
        assert text in values and len({float(v) for v in values}) == 1


@given(st.lists(st.sampled_from(["v1", "v2", "2.3.1", "a:1", "x9"]), min_size=1, max_size=20))
def test_every_token_shown_was_held(values: list[str]) -> None:
    text = shown("tok", values)
    if text.startswith("{"):
        parts = text[1:-1].split("|")
        assert all(p in values for p in parts if not p.startswith("+"))
    else:
        assert text in values
