"""tools/latest_frontier.py: the schedule docs/BENCHMARKS.md and docs/config.md quote."""
from __future__ import annotations

from conftest import _load_tool

frontier = _load_tool("latest_frontier")
T = 1000 / 30


def test_a_run_of_whole_camera_intervals_gets_fresh_frames_within_the_budget():
    ratio, idle = frontier.schedule(T, 1.0, 2 * T - 1.0, 0.02, 8.0, jitter=0.0)
    assert ratio < 1.01 and idle <= 0.02


def test_a_run_of_one_and_a_third_intervals_cannot_be_fresh_at_two_percent_idle():
    run = 1.3 * T - 1.0
    best, idle = frontier.best_rule(T, 1.0, run, 0.03, 0.02)
    assert best > 1.2 and idle <= 0.02
    assert frontier.lited_rule(T, 1.0, run, 0.03)[0] >= best


def test_waiting_longer_buys_fresher_frames_with_idle():
    run = 1.5 * T - 1.0
    never = frontier.schedule(T, 1.0, run, 0.0, 0.0, jitter=0.03)
    always = frontier.schedule(T, 1.0, run, 1.0, T, jitter=0.03)
    assert never[1] == 0 and always[1] > 0.05
    assert always[0] < never[0]
