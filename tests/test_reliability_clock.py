"""A board without a real-time clock: the daemon runs with its wall clock a year off until NTP
steps it (libfaketime moves CLOCK_REALTIME for the daemon alone, from a file the test rewrites;
CLOCK_MONOTONIC is left as it is, as a real step leaves it). The watchdog's pings, the uplink's
TLS and its round trips must survive the step."""
from __future__ import annotations

import glob
import os
import time
from pathlib import Path

import pytest

from conftest import write_video
from daemon_process import DaemonProcess
from test_daemon import wait_until
from test_reliability_requests import NotifyListener
from test_uplink import FACE_RULE, Cloud, Collector, broker, device, uplink_status  # noqa: F401 - broker: a fixture

LIBFAKETIME = next(iter(glob.glob("/usr/lib/*/faketime/libfaketime.so.1")), None)
if LIBFAKETIME is None:
    if os.environ.get("CI") == "true":
        pytest.fail("libfaketime is not installed (tools/apt-test.txt)")
    pytest.skip("libfaketime is not installed (apt-get install libfaketime)", allow_module_level=True)


def stepped_clock(clock: Path, offset: str) -> dict:
    """The environment of a process whose wall clock is `offset` away from the real one (`+365d`,
    `-60`), and follows `clock` rewritten (read again at most once a second)."""
    clock.write_text(offset + "\n")
    return {"LD_PRELOAD": LIBFAKETIME, "FAKETIME_TIMESTAMP_FILE": str(clock), "FAKETIME_CACHE_DURATION": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def test_a_step_back_of_the_wall_clock_does_not_stop_the_watchdog_with_http_on(tmp_path, bundles_dir):
    """The HTTP front end's heartbeat ran on tornado's PeriodicCallback, which schedules on the
    wall clock: a step back of 60 s held its next beat 60 s, the watchdog's pings stopped and
    systemd would have restarted the daemon."""
    notify = NotifyListener()
    clock = tmp_path / "clock"
    config = {"models": {"face": str(bundles_dir / "ultraface")}, "http": {"listen": "127.0.0.1:0"},
              "streams": [{"name": "cam", "source": "synth://?size=64x48&fps=10", "model": "face"}]}
    d = DaemonProcess(tmp_path, config, env={**notify.env(3.0), **stepped_clock(clock, "+0")}).start().wait_ready()
    try:
        time.sleep(2)
        clock.write_text("-60\n")  # NTP steps the clock back a minute
        stepped = time.monotonic()
        time.sleep(10)
        pings = notify.pings(after=stepped - 1.5)
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        with d.client() as client:
            status = client.status()
    finally:
        d.stop()
        notify.close()
    print(f"\nclock stepped back 60 s: {len(pings)} pings in the next 10 s, largest gap {max(gaps, default=0):.2f} s")
    assert len(pings) >= 6 and max(gaps) < 3.0, pings
    assert "no beat from" not in d.output() and not status.get("watchdog_stale"), d.output()[-2000:]


def test_a_device_clock_a_year_ahead_is_named_and_its_round_trips_survive_ntp(broker, tmp_path, bundles_dir):
    """The device boots a year ahead (a wrong fake-hwclock): the broker's certificate looks expired
    and the uplink said `check ca and the URL's host`; crops stored then carried that year in
    `queued_ts`, and once NTP stepped the clock back their answers said `round_trip_ms` of minus a
    year. Now the line names the device's date and the clock, and round trips run on the monotonic
    clock."""
    clock = tmp_path / "clock"
    write_video(tmp_path / "v.avi", frames=30, size=(320, 240))
    d = device(tmp_path, {
        "models": {"face": str(bundles_dir / "ultraface")},
        "streams": [{"name": "cam", "source": f"file://{tmp_path / 'v.avi'}?loop=1&realtime=1", "model": "face"}],
        "uplink": broker.uplink_config("dev1", ack="cloud", streams={"cam": {**FACE_RULE, "max_rate": 4}},
                                       status_interval=1, outbox={"dir": str(tmp_path / "outbox")})},
               env=stepped_clock(clock, "+365d"))
    d.start()
    bus = Collector(d.pub)
    cloud = None
    try:
        cloud = Cloud(broker, tmp_path, bundle=bundles_dir / "mobilenetv2")
        refused = wait_until(lambda: (lambda e: e if e and "certificate" in e else None)(uplink_status(d)["last_error"]),
                             60)
        wait_until(lambda: uplink_status(d)["outbox"]["queued"] >= 8, 60)  # crops stored a year ahead
        clock.write_text("+0\n")  # NTP steps the clock back
        stepped = time.monotonic()
        wait_until(lambda: len(bus.answers) >= 6, 90)
        connected_after = time.monotonic() - stepped
    finally:
        bus.close()
        if cloud is not None:
            cloud.stop()
        d.stop()
    ahead = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 365 * 86400))
    assert refused.endswith(f"certificate has expired (this device's date is {ahead} UTC: check its clock and NTP, "
                            "then the certificate's dates)"), refused
    assert d.output().count("certificate has expired") == 1, d.output()[-3000:]
    trips = [a["round_trip_ms"] for a in bus.answers if "round_trip_ms" in a]
    print(f"\nrefused a year ahead: {refused!r}; answers {connected_after:.1f} s after the step; "
          f"round trips {min(trips):.0f} to {max(trips):.0f} ms")
    assert len(trips) == len(bus.answers) and all(0 < t < 180_000 for t in trips), trips
