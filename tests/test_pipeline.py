"""Streams end to end with real sources, the real ring and real models."""
from __future__ import annotations

import threading
import time
import tracemalloc

import cv2
import pytest

from conftest import need_shared, write_video
from lited.bundle import BundleError, load_bundle
from lited.model import Model
from lited.stream import Stream
from lited.stream.runner import ModelRunner
from lited.stream.stream import ring_slots



class Collector:
    """publish/on_event callbacks that keep everything, thread-safe."""

    def __init__(self) -> None:
        self.results: list = []
        self.events: list = []
        self.lock = threading.Lock()

    def publish(self, result: dict) -> None:
        with self.lock:
            self.results.append(result)

    def event(self, event: dict) -> None:
        with self.lock:
            self.events.append(event)

    def wait(self, count: int, timeout: float = 60) -> list:
        deadline = time.monotonic() + timeout
        while len(self.results) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.results)

    def states(self) -> list:
        return [e["state"] for e in self.events if e["event"] == "state"]


@pytest.fixture(scope="module")
def fastestdet(bundles_dir):
    return load_bundle(bundles_dir / "fastestdet")


def stream_of(bundle, uri: str, sink: Collector, name: str = "cam", **kw) -> Stream:
    s = Stream(name, uri, lambda: Model(bundle, isolated=True), sink.publish, sink.event, **kw)
    s.start()
    return s


def test_lossless_file_gives_every_frame_and_equals_infer(tmp_path, fastestdet):
    frames = write_video(tmp_path / "v.avi", frames=9, per_image=3)
    sink = Collector()
    s = stream_of(fastestdet, f"file://{tmp_path / 'v.avi'}", sink)
    try:
        results = sink.wait(len(frames))
        deadline = time.monotonic() + 10
        while s.state != "ended" and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        s.stop()
    assert [r["seq"] for r in results] == list(range(len(frames)))
    assert all(r["skipped"] == 0 for r in results)
    reference = Model(fastestdet)
    for r, frame in zip(results, frames):
        want = reference.infer(frame)
        assert r["detections"] == want["detections"]
        assert set(r["timings_ms"]) >= {"capture", "preprocess", "infer", "postprocess"}
    labels = {d["label"] for r in results for d in r["detections"]}
    assert {"cat", "cup"} <= labels
    assert "ended" in sink.states()


def test_latest_frame_wins_on_a_live_source(fastestdet):
    sink = Collector()
    s = stream_of(fastestdet, "synth://?size=640x480&fps=200", sink)
    try:
        results = sink.wait(15)
    finally:
        s.stop()
    seqs = [r["seq"] for r in results]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert sum(r["skipped"] for r in results) > 0  # the camera outruns the model: frames were skipped
    assert s.counters["captured"] > s.counters["inferred"]
    assert s.status()["counters"]["skipped"] == s.counters["skipped"]


def test_frame_size_change_mid_stream_rebuilds_the_ring(tmp_path, fastestdet):
    d = tmp_path / "imgs"
    d.mkdir()
    for i, name in enumerate(["chelsea", "coffee", "astronaut"]):  # three different sizes
        img = cv2.imread(str(need_shared("images", f"{name}.png")))
        cv2.imwrite(str(d / f"{i}.png"), img)
    sink = Collector()
    s = stream_of(fastestdet, f"images://{d}", sink)
    try:
        results = sink.wait(3)
    finally:
        s.stop()
    assert [(r["width"], r["height"]) for r in results] == [(451, 300), (600, 400), (512, 512)]
    assert [r["seq"] for r in results] == [0, 1, 2]
    assert sum(e["event"] == "resized" for e in sink.events) == 2
    assert results[0]["detections"][0]["label"] == "cat"


def test_several_streams_in_one_process_share_a_bundle(bundles_dir, fastestdet):
    ultraface = load_bundle(bundles_dir / "ultraface")
    sinks = [Collector() for _ in range(3)]
    streams = [stream_of(fastestdet, "synth://?size=320x240&fps=30", sinks[0], "a"),
               stream_of(fastestdet, "synth://?size=640x480&fps=30", sinks[1], "b"),
               stream_of(ultraface, "synth://?size=640x360&fps=30", sinks[2], "c")]
    try:
        for sink in sinks:
            sink.wait(5)
    finally:
        for s in streams:
            s.stop()
    assert [{r["stream"] for r in sink.results} for sink in sinks] == [{"a"}, {"b"}, {"c"}]
    assert sinks[2].results[0]["task"] == "face_detection"
    assert all(len(sink.results) >= 5 for sink in sinks)
    assert len({s.ring.name if s.ring else None for s in streams}) == 1  # all rings removed (None)


def test_swap_model_between_frames_and_a_bad_one_keeps_the_old(bundles_dir, fastestdet):
    ultraface = load_bundle(bundles_dir / "ultraface")
    sink = Collector()
    s = stream_of(fastestdet, "synth://?size=640x480&fps=60", sink)
    try:
        sink.wait(3)
        with pytest.raises(BundleError, match="not a directory"):
            s.swap_model(lambda: Model(load_bundle("/nonexistent/bundle"), isolated=True))
        n = len(sink.results)
        assert sink.wait(n + 3)[-1]["model"] == "fastestdet"  # still serving
        s.swap_model(lambda: Model(ultraface, isolated=True))
        n = len(sink.results)
        after = sink.wait(n + 3)[n:]
    finally:
        s.stop()
    assert after and all(r["model"] == "ultraface" for r in after)
    seqs = [r["seq"] for r in sink.results]
    assert seqs == sorted(seqs)


def test_steady_state_allocates_nothing_per_frame(bundles_dir):
    """tracemalloc over two windows of 300 frames: a leak grows in both (the
    namedtuple._replace leak this caught was 40 KB per 500 frames); results in
    flight between the four threads make one window noisy, not both."""
    bundle = load_bundle(bundles_dir / "ultraface")
    sink = Collector()
    count = [0]

    def publish(result: dict) -> None:
        count[0] += 1  # keep nothing: we measure the pipeline, not the sink

    s = Stream("mem", "synth://?size=320x240&fps=0", lambda: Model(bundle, isolated=True), publish, sink.event,
               stats_window=32)  # a short stats window fills during warm-up; what grows after is per frame
    s.start()
    grown = []
    try:
        while count[0] < 100:
            time.sleep(0.01)
        tracemalloc.start(1)
        for _ in range(2):
            first = count[0]
            before = tracemalloc.take_snapshot()
            while count[0] < first + 300:
                time.sleep(0.01)
            after = tracemalloc.take_snapshot()
            grown.append(sum(stat.size_diff for stat in after.compare_to(before, "filename")))
        tracemalloc.stop()
    finally:
        s.stop()
    assert min(grown) < 16 * 1024, f"grew {grown} bytes in two windows of 300 frames"


def test_a_source_that_fails_to_open_backs_off_and_says_so(fastestdet):
    sink = Collector()
    s = stream_of(fastestdet, "v4l2:///dev/video99", sink, backoff=(0.05, 0.2))
    try:
        deadline = time.monotonic() + 5
        while s.counters["reconnects"] < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        s.stop()
    assert s.counters["reconnects"] >= 3
    assert "backoff" in sink.states() and "connecting" in sink.states()
    detail = [e["detail"] for e in sink.events if e.get("state") == "backoff"][0]
    assert "/dev/video99" in detail


@pytest.mark.parametrize("policy", ["latest", "queue"])
def test_held_frames_stay_within_the_ring_size_and_all_go_back(fastestdet, policy):
    """Leases: a runner holds at most FRAMES_HELD frames and the stream its
    latest result's frame and keep_results more (what the ring is sized
    for: no lease is ever broken), through a model swap too; once the stream
    stops every lease has been released."""
    sink = Collector()
    s = stream_of(fastestdet, "synth://?size=640x480&fps=200", sink, policy=policy, keep_results=2)
    peak = 0
    try:
        sink.wait(1)
        ring = s.ring
        assert ring.slots == ring_slots(2, 2)
        for swap in (True, False):
            target = len(sink.results) + 20
            while len(sink.results) < target:
                peak = max(peak, ring.held)
                time.sleep(0.001)
            if swap:
                s.swap_model(lambda: Model(fastestdet, isolated=True))
        assert s.status()["policy"] == policy
    finally:
        s.stop()
    assert 3 <= peak <= ModelRunner.FRAMES_HELD + 1 + 2, peak
    assert ring.leases_broken == 0 and ring.held == 0
    seqs = [r["seq"] for r in sink.results]
    assert all(b - a == r["skipped"] + 1 for a, b, r in zip(seqs, seqs[1:], sink.results[1:]))


def test_a_result_frame_held_for_a_late_reader_stays_that_frame_and_goes_back(fastestdet):
    """`hold_result_frame`, as the uplink's packer takes it when it selects a
    result: the lease keeps that very frame intact while the camera goes
    round the ring many times; the ring has room for `held_elsewhere` such
    leases (none broken, capture goes on), each goes back on release, and a
    result whose frame the ring already reused gets None, not another frame."""
    sink, held = Collector(), []
    stream: list = []

    def publish(result: dict) -> None:
        sink.publish(result)
        if result["seq"] >= 3 and len(held) < 3:
            lease = stream[0].hold_result_frame(result)
            held.append((result, lease, lease.view().copy()))

    s = Stream("cam", "synth://?size=640x480&fps=100", lambda: Model(fastestdet, isolated=True), publish,
               sink.event, held_elsewhere=3)
    stream.append(s)
    s.start()
    try:
        sink.wait(1)
        ring = s.ring
        assert ring.slots == ring_slots(2, 0, 3)
        start = ring.frames_written
        deadline = time.monotonic() + 30
        while ring.frames_written < start + 5 * ring.slots and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ring.frames_written >= start + 5 * ring.slots, "the camera must have gone round the ring"
        assert len(held) == 3
        for result, lease, pixels in held:
            assert ring.is_current(lease.slot, lease.seq) and (lease.view() == pixels).all()
            assert (lease.slot, lease.seq) == (result["slot"], result["slot_seq"])
        assert ring.leases_broken == 0
        gone = held[0][0]
        for _, lease, _ in held:
            lease.release()
        deadline = time.monotonic() + 30
        while ring.is_current(gone["slot"], gone["slot_seq"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s.hold_result_frame(gone) is None
    finally:
        s.stop()
    assert ring.held == 0


def test_a_live_stream_whose_post_is_slower_than_its_engine_starts_frames_as_post_frees(fastestdet):
    """`latest`, post slower than the engine (a cascade's stages; here the test's own decoder, 0.3 s):
    the engine ran the next frames at once and their results waited for post one behind the other,
    each older (the cascade audit: 3 s stages, results 17 s behind the camera, `infer` counting the
    wait). The engine now starts a frame so that it ends as post frees: the result hardly waits for
    post, and the frames in between are skipped."""
    sink = Collector()

    def model():
        m = Model(fastestdet, isolated=True)
        decode = m.decoder.decode

        def slow(outputs, geom):
            time.sleep(0.3)
            return decode(outputs, geom)
        m.decoder.decode = slow
        return m

    s = Stream("cam", "synth://?size=640x480&fps=30", model, sink.publish, sink.event)
    s.start()
    try:
        results = sink.wait(10, timeout=60)
    finally:
        s.stop()
    assert len(results) >= 10
    for result in results[3:10]:
        t = result["timings_ms"]
        assert t["post_wait"] < 100 and t["total"] < 500 and result["skipped"] >= 5, (t, result["skipped"])


def test_a_frame_the_decoder_cannot_read_costs_that_result_not_the_stream(tmp_path, fastestdet):
    """An exception in the decoder ended the post thread: the stream said `streaming` and published
    nothing more, for ever (a hand-written bundle's gfl decoder on a priorbox model did it at the
    first frame). Now that frame's result is lost, the error counted and said once, the rest flow,
    and its frame goes back to the ring. The failing decoder is the test's own, installed on the model the stream builds."""
    frames = write_video(tmp_path / "v.avi", frames=12)
    sink = Collector()

    def model():
        m = Model(fastestdet, isolated=True)
        decode, calls = m.decoder.decode, []

        def flaky(outputs, geom):
            calls.append(1)
            if 3 <= len(calls) <= 5:
                raise ValueError("outputs [[1, 85, 22, 22]] not as expected")
            return decode(outputs, geom)
        m.decoder.decode = flaky
        return m

    s = Stream("cam", f"file://{tmp_path / 'v.avi'}", model, sink.publish, sink.event)
    s.start()
    try:
        results = sink.wait(len(frames) - 3, timeout=60)
        status = s.status()
        ring = s.ring
    finally:
        s.stop()
    assert [r["seq"] for r in results] == [0, 1] + list(range(5, len(frames)))
    assert ring.held == 0, "the failed frames' leases went back (each kept a slot for ever)"
    decode_events = [e for e in sink.events if e["event"] == "decode"]
    assert [e["detail"] for e in decode_events] == [
        "decoder grid: ValueError: outputs [[1, 85, 22, 22]] not as expected; the frame's result is lost"]
    assert status["counters"]["errors"] >= 3
