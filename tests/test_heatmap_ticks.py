"""Cluster ticks of a PNG heatmap: labels of neighbouring small clusters are thinned so none prints
over another (ToxCast's 617 tasks in 40-60 clusters made an unreadable pile)."""

from __future__ import annotations

from cft.views.heatmap import spaced_ticks


def test_ticks_closer_than_the_gap_are_dropped_and_the_rest_kept_in_order():
    ticks = [(10.0, "b"), (0.0, "a"), (10.5, "c"), (11.0, "d"), (30.0, "e")]
    assert spaced_ticks(ticks, 1.0) == [(0.0, "a"), (10.0, "b"), (11.0, "d"), (30.0, "e")]
    assert spaced_ticks(ticks, 0.1) == sorted(ticks)
    assert spaced_ticks(ticks, 100.0) == [(0.0, "a")]
    assert spaced_ticks([], 1.0) == []
