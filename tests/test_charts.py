"""What the report's charts are given: curves reduced for display without hiding a spike
or a NaN, data that cannot break out of its block, the markers the report promises."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lorascope.report import charts


def test_reduction_keeps_every_bucket_extreme_and_nan():
    rng = np.random.default_rng(0)
    v = 1.0 + 0.01 * rng.standard_normal(100_000)
    v[31_337] = 50.0                        # one spike up
    v[77_000] = -3.0                        # one down
    v[12_345] = np.nan
    v[88_888] = np.inf
    idx = charts.reduce_index(v, 1000)
    assert len(idx) <= 2 * 1000 + 4 and list(idx) == sorted(set(idx))
    kept = set(idx.tolist())
    assert {31_337, 77_000, 12_345, 88_888, 0, 99_999} <= kept


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 5000), buckets=st.integers(1, 300), seed=st.integers(0, 2**16),
       holes=st.lists(st.integers(0, 4999), max_size=20))
def test_reduction_never_hides_a_bucket_extreme_or_a_nonfinite_value(n, buckets, seed, holes):
    """For any curve: each bucket of consecutive points keeps its max, its min and a
    non-finite point when it has one, so the drawn curve spans the same range."""
    v = np.random.default_rng(seed).standard_normal(n)
    for h in holes:
        if h < n:
            v[h] = np.nan
    idx = charts.reduce_index(v, buckets)
    if n <= 2 * buckets:
        assert list(idx) == list(range(n))
        return
    bid = (np.arange(n) * buckets) // n
    kept = v[idx]
    for b in np.unique(bid):
        seg = np.flatnonzero(bid == b)
        mine = idx[(idx >= seg[0]) & (idx <= seg[-1])]
        fin = v[seg][np.isfinite(v[seg])]
        if len(fin):
            assert np.nanmax(v[mine]) == fin.max() and np.nanmin(v[mine]) == fin.min()
        if not np.isfinite(v[seg]).all():
            assert not np.isfinite(v[mine]).all()
    assert np.nanmax(kept) == np.nanmax(v) and np.nanmin(kept) == np.nanmin(v)


def test_points_near_the_diagnosed_step_are_all_kept():
    steps = np.arange(1, 50_001)
    v = np.sin(steps / 100.0)
    keep = charts._keep_index(steps, at=[7_777], windows=[30_000])
    idx = set(charts.reduce_index(v, 500, keep).tolist())
    assert set(range(30_000 - 1 - charts.WINDOW, 30_000 + charts.WINDOW)) <= idx
    assert 7_776 in idx                                      # the point at step 7777


@pytest.mark.parametrize("evil", ["</script><script>alert(1)</script>", "<!--", "a & b > c",
                                  "\u2028\u2029", "\x00\x1b[2J", "'\"`"])
def test_page_json_cannot_end_its_block(evil):
    text = charts.page_json({"label": evil, "y": [1.0, None]})
    assert "<" not in text and ">" not in text and "&" not in text
    assert all(ord(c) < 128 for c in text)
    assert json.loads(text) == {"label": evil, "y": [1.0, None]}


def test_labels_show_controls_escaped_and_are_bounded():
    assert charts.label("loss\x1b[31m\u202e") == "loss\\x1b[31m\\u202e"
    assert len(charts.label("x" * 500)) == charts.LABEL_CHARS


def test_values_are_six_digits_and_gaps():
    assert charts._ys(np.array([1.23456789, np.nan, np.inf, -1e-12])) == [1.23457, None, None, -1e-12]


def test_static_svg_carries_no_string_from_the_data():
    data = {"charts": [{"series": [{"label": "<b>x</b>", "x": [1, 2, 3], "y": [1.0, None, 0.5],
                                    "color": "#2563eb"}], "log": False}],
            "markers": {"diag": {"step": 2, "from": 2, "to": 3}}}
    svg = charts.static_svg(data)
    assert svg.startswith("<svg") and "<b>" not in svg and "x</b>" not in svg
    assert svg.count("<polyline") == 2                       # broken at the gap
