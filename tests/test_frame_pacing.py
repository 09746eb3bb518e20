"""The camera's beat, as the `latest` policy reads it to decide whether the
engine waits a moment for a fresher frame (runner.py `_hold`)."""
import random
import time

import pytest

RANDOM = random.Random(2)

from lited.stream.stats import FPS_MIN_SPAN, StreamStats


def _stats(gaps):
    stats, at = StreamStats(), 100.0
    stats.frame_captured(0, 1.0, at=at)
    for number, gap in enumerate(gaps, 1):
        at += gap
        stats.frame_captured(number, 1.0, at=at)
    return stats, at


def test_a_steady_camera_has_a_due_time_and_an_interval():
    rng = random.Random(1)
    stats, last = _stats([1 / 30 + rng.uniform(-0.002, 0.002) for _ in range(40)])
    due, interval = stats.next_frame_due()
    assert interval == pytest.approx(1 / 30, abs=0.002)
    assert due == pytest.approx(last + interval)


def test_a_camera_that_drops_a_frame_now_and_then_is_still_steady():
    gaps = [1 / 30] * 40
    gaps[-5] = 2 / 30
    assert StreamStats.next_frame_due(_stats(gaps)[0])[1] == pytest.approx(1 / 30)


@pytest.mark.parametrize("gaps", [
    [1 / 30] * 10,                                                      # too few frames yet
    [RANDOM.expovariate(30) for _ in range(40)],              # frames at random times
    [0.001, 0.001, 0.2] * 14,                                           # a network camera in bursts
], ids=["short", "random", "bursts"])
def test_an_unsteady_or_new_source_has_no_due_time(gaps):
    assert _stats(gaps)[0].next_frame_due() is None


def test_fps_is_sane_when_a_network_camera_hands_out_its_buffer_at_once():
    """Seen: status "fps 1061" just after an RTSP camera at 5 fps connected,
    its buffered frames captured within milliseconds."""
    stats = StreamStats()
    now = time.monotonic()
    for i in range(14):  # a burst, 1 ms apart
        stats.frame_captured(i, 0.1, at=now - 0.014 + i * 0.001)
    assert stats.fps(5.0) == pytest.approx(13 / FPS_MIN_SPAN)
    steady = StreamStats()
    for i in range(60):  # 30 fps for 2 s
        steady.frame_captured(i, 0.1, at=now - 2.0 + (i + 1) / 30)
    assert steady.fps(5.0) == pytest.approx(30.0, rel=1e-6)
    settled = StreamStats()  # the burst, then 5 fps for 5 s: the burst is out of the window by now
    for i in range(30):
        settled.frame_captured(i, 0.1, at=now - 5.0 + i * 0.001)
    for i in range(25):
        settled.frame_captured(30 + i, 0.1, at=now - 5.0 + (i + 1) * 0.2)
    assert settled.fps(5.0) == pytest.approx(5.0, rel=1e-6)
    slow = StreamStats()  # one frame in 5 s: the last two frames still give the rate
    for i in range(3):
        slow.frame_captured(i, 0.1, at=now - 10.0 + i * 5.0)
    assert slow.fps(6.0) == pytest.approx(0.2)
