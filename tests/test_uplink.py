"""The MQTT uplink with real parts: Mosquitto from apt on loopback with TLS,
passwords, client certificates and the ACL of docs/uplink.md; `lited serve`
and `lited cloud` as real processes; real models on real photos."""
from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import _load_tool, write_video
from daemon_process import DaemonProcess
from test_daemon import wait_until
from lited.client import Subscriber
from lited.config import ConfigError, parse_config

mqtt = pytest.importorskip("paho.mqtt.client")
if shutil.which("mosquitto") is None:
    if os.environ.get("CI") == "true":
        pytest.fail("mosquitto is not installed (tools/apt-test.txt)")
    pytest.skip("mosquitto is not installed (apt-get install mosquitto)", allow_module_level=True)

broker_tool = _load_tool("mqtt_broker")
NOT_AUTHORIZED = 0x87
FACE_RULE = {"labels": ["face"], "min_score": 0.7, "attach": "crops", "margin": 0.2}


@pytest.fixture
def broker(tmp_path):
    b = broker_tool.Broker(tmp_path / "mqtt", devices=("dev1", "dev2"))
    b.start()
    yield b
    b.stop()


def connected(settings, client_id: str, on_message=None):
    """A connected paho client (MQTT 5, TLS) and a list collecting what it receives."""
    from lited.mqtt_link import make_client

    got: list = []
    client = make_client(settings, client_id)
    client.on_message = on_message or (lambda c, u, msg: got.append((msg.topic, msg.payload)))
    ready, out = threading.Event(), {}

    def on_connect(c, u, flags, reason_code, props):
        out["rc"] = reason_code
        ready.set()
    client.on_connect = on_connect
    host, port, _ = settings.address
    client.connect(host, port, keepalive=10)
    client.loop_start()
    assert ready.wait(10), "no CONNACK"
    if out["rc"].is_failure:
        client.loop_stop()
        raise ConnectionError(str(out["rc"]))
    return client, got


def subscribe(client, topic: str) -> list:
    done, out = threading.Event(), {}
    client.on_subscribe = lambda c, u, mid, codes, props: (out.setdefault("codes", codes), done.set())
    client.subscribe(topic, qos=1)
    assert done.wait(5)
    return [rc.value for rc in out["codes"]]


def publish(client, topic: str, payload: bytes = b"x") -> int:
    done, out = threading.Event(), {}
    client.on_publish = lambda c, u, mid, rc, props: (out.setdefault("rc", rc), done.set())
    client.publish(topic, payload, qos=1)
    assert done.wait(5)
    return out["rc"].value


def close(*clients) -> None:
    for c in clients:
        c.disconnect()
        c.loop_stop()


class Cloud:
    """`lited cloud` as a real process, recording what it receives (JSON lines)."""

    def __init__(self, broker, tmp: Path, client_id: str = "cloud-a", bundle: Path | None = None) -> None:
        self.record = tmp / f"{client_id}.jsonl"
        self.log = tmp / f"{client_id}.log"
        args = [sys.executable, "-m", "lited.cli", "cloud", *broker.server_args(), "--client-id", client_id,
                "--record", str(self.record)] + (["--bundle", str(bundle)] if bundle else [])
        self._log = open(self.log, "ab")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._log)
        wait_until(lambda: b"subscribed to" in self.log.read_bytes() or self.proc.poll() is not None, 60)
        assert self.proc.poll() is None, self.log.read_text()

    def entries(self, kind: str | None = None) -> list:
        if not self.record.exists():
            return []
        lines = [json.loads(line) for line in self.record.read_text().splitlines() if line]
        return [e for e in lines if kind is None or e["kind"] == kind]

    def stop(self) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        self._log.close()
        assert self.proc.returncode == 0, self.log.read_text()
        return json.loads(out.decode().strip().splitlines()[-1])


class Collector:
    """A local-bus subscriber in a thread: every result and answer of the daemon."""

    def __init__(self, endpoint: str) -> None:
        self.sub = Subscriber(endpoint, answers=True)
        self.results: list = []
        self.answers: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        time.sleep(0.3)   # let the subscription reach the publisher

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self.sub.recv(timeout=0.2)
            if msg is not None:
                (self.answers if msg["type"] == "answer" else self.results).append(msg)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sub.close()


def device(tmp_path: Path, config: dict, env: dict | None = None) -> DaemonProcess:
    (tmp_path / "d").mkdir(exist_ok=True)
    return DaemonProcess(tmp_path / "d", config, env=env)


def add_stream(d: DaemonProcess, stream: dict) -> None:
    """Add a stream with SIGHUP (config reload), as an operator would."""
    d.config["streams"] = [*d.config["streams"], stream]
    d.write_config()
    d.signal(signal.SIGHUP)


def uplink_status(d: DaemonProcess) -> dict:
    with d.client() as client:
        return client.status()["uplink"]


def drain(d: DaemonProcess, broker, tmp_path: Path) -> "Cloud":
    """Start the broker and a `lited cloud`, wait until the device's outbox is
    empty, stop both the server and the device; the (stopped) Cloud."""
    cloud = None
    try:
        broker.start()
        cloud = Cloud(broker, tmp_path)
        wait_until(lambda: uplink_status(d)["outbox"]["queued"] == 0, 60)
        time.sleep(0.5)
    finally:
        if cloud is not None:
            cloud.stop()
        d.stop()
    return cloud


def settled(d: DaemonProcess, quiet: float = 1.0) -> dict:
    """The uplink's status once nothing more was stored for `quiet` seconds."""
    last, since = None, time.monotonic()
    while True:
        status = uplink_status(d)
        if status["outbox"]["next_seq"] != last:
            last, since = status["outbox"]["next_seq"], time.monotonic()
        elif time.monotonic() - since >= quiet:
            return status
        time.sleep(0.2)


def selected(results: list, rule: dict) -> dict:
    """(stream, seq) -> indices of the detections `rule` selects, for results with any."""
    out = {}
    for r in results:
        idx = [i for i, det in enumerate(r["detections"])
               if det["label"] in rule["labels"] and det["score"] >= rule["min_score"]]
        if idx:
            out[(r["stream"], r["seq"])] = idx
    return out


def check_exactly_once(cloud: Cloud, results: list, answers: list, rule: dict) -> tuple:
    """Every selected result and each of its crops arrived once at the server
    (after its duplicate filter), and each crop's answer once on the local bus."""
    want = selected(results, rule)
    got_results = collections.Counter((e["message"]["stream"], e["message"]["seq"]) for e in cloud.entries("result"))
    assert set(got_results) == set(want), (f"missing {sorted(set(want) - set(got_results))[:5]}, "
                                           f"extra {sorted(set(got_results) - set(want))[:5]}")
    assert max(got_results.values()) == 1, got_results.most_common(3)
    crops_listed = {(e["message"]["stream"], e["message"]["seq"], i) for e in cloud.entries("result")
                    for i in e["message"]["crops"]}
    got_crops = collections.Counter((e["image"]["stream"], e["image"]["seq"], e["image"]["detection"])
                                    for e in cloud.entries("crop"))
    assert set(got_crops) == crops_listed and max(got_crops.values(), default=1) == 1
    got_answers = collections.Counter((a["stream"], a["seq"], a["detection"]) for a in answers)
    assert set(got_answers) == crops_listed and max(got_answers.values(), default=1) == 1
    ids = [e["id"] for e in cloud.entries() if "id" in e]
    assert len(ids) == len(set(ids))
    return want, crops_listed


def camera_gone_and_drained(d: DaemonProcess) -> None:
    """Remove the device's streams (SIGHUP), then wait until its outbox is empty and nothing awaits
    a confirmation."""
    d.config["streams"] = []
    d.write_config()
    d.signal(signal.SIGHUP)
    with d.client() as client:
        wait_until(lambda: not client.status()["streams"], 30)
    wait_until(lambda: (lambda u: u["outbox"]["queued"] == 0 and u["unconfirmed"] == 0)(uplink_status(d)), 60)


@contextlib.contextmanager
def streaming_faces(broker, tmp_path: Path, bundles_dir: Path, rule: dict = FACE_RULE, size: tuple = (320, 240),
                    **uplink):
    """A device with an uplink to `broker` (`ack: cloud`, crops of faces) and a camera streaming
    faces (a looped video, a face in 1 frame of 3, 15 fps), a Collector on its local bus and a
    running `lited cloud`: (device, bus, cloud). On leaving, all stopped; the server's last
    counters in `cloud.stats`."""
    write_video(tmp_path / "v.avi", frames=90, size=size)
    d = device(tmp_path, {
        "models": {"face": str(bundles_dir / "ultraface")}, "streams": [],
        "uplink": broker.uplink_config("dev1", ack="cloud", resend_after=1, status_interval=1,
                                       streams={"*": rule}, outbox={"dir": str(tmp_path / "outbox")},
                                       **uplink)})
    d.start()
    bus = Collector(d.pub)
    cloud = None
    try:
        cloud = Cloud(broker, tmp_path)
        wait_until(lambda: uplink_status(d)["connected"])
        # the default ring: a selected result's frame is leased until the uplink cuts its crops
        add_stream(d, {"name": "cam", "source": f"file://{tmp_path / 'v.avi'}?realtime=1&loop=1",
                       "model": "face"})
        yield d, bus, cloud
    finally:
        bus.close()
        if cloud is not None:
            cloud.stats = cloud.stop()
        d.stop()


# -- the ACL -------------------------------------------------------------------------------------

def test_documented_acl_confines_each_device_to_its_own_topics(broker):
    """Mosquitto 2.0's acl_file does not check SUBSCRIBE (the SUBACK grants it)
    but checks every delivery and every PUBLISH: so this asserts on what is
    delivered and on the PUBACK reason codes."""
    dev1, got1 = connected(broker.device_settings("dev1"), "dev1")
    dev2, _ = connected(broker.device_settings("dev2"), "dev2")
    cloud, got_cloud = connected(broker.server_settings(), "cloud-acl")
    try:
        for pattern in ("lited/dev2/#", "lited/+/req", "lited/#", "#", "$share/g/lited/dev2/req",
                        "lited/dev1/req", "lited/dev1/answers/+"):
            subscribe(dev1, pattern)
        assert subscribe(cloud, "lited/#") == [1]
        assert publish(dev1, "lited/dev2/results/cam", b"spoofed") == NOT_AUTHORIZED
        assert publish(dev1, "lited/dev2/status", b"spoofed") == NOT_AUTHORIZED
        assert publish(dev1, "lited/dev1/answers/cam", b"self-answer") == NOT_AUTHORIZED
        assert publish(dev1, "lited/dev1/events/cam", b"ok") == 0
        assert publish(dev2, "lited/dev2/crops/cam", b"crop2") == 0
        assert publish(cloud, "lited/dev2/req", b"{}") == 0
        assert publish(cloud, "lited/dev2/answers/cam", b"{}") == 0
        assert publish(cloud, "lited/dev1/req", b"{}") == 0
        assert publish(cloud, "lited/dev1/results/cam", b"forged") == NOT_AUTHORIZED
        time.sleep(0.5)
        assert {t for t, _ in got1} == {"lited/dev1/req"}, got1   # nothing of dev2 although granted
        cloud_topics = {t for t, _ in got_cloud}
        assert {"lited/dev1/events/cam", "lited/dev2/crops/cam"} <= cloud_topics
        assert not cloud_topics & {"lited/dev2/results/cam", "lited/dev2/status", "lited/dev1/results/cam"}
        # a device taking another's client id does not kick it off (use_username_as_clientid)
        dropped = threading.Event()
        dev1.on_disconnect = lambda *a: dropped.set()
        imposter, _ = connected(broker.device_settings("dev2"), "dev1")
        time.sleep(0.5)
        assert not dropped.is_set()
        close(imposter)
        with pytest.raises(ConnectionError):
            connected(broker.device_settings("dev1", password="wrong"), "dev1")
    finally:
        close(dev1, dev2, cloud)


# -- delivery ------------------------------------------------------------------------------------

def test_broker_killed_20_times_during_a_live_stream_loses_nothing(broker, tmp_path, bundles_dir):
    """`ack: cloud`: the broker is SIGKILLed and restarted 20 times while a
    camera streams faces; every selected result and crop reaches the server
    exactly once after its duplicate filter, and each crop's answer reaches
    the local bus once."""
    with streaming_faces(broker, tmp_path, bundles_dir, window=32, keepalive=5) as (d, bus, cloud):
        wait_until(lambda: len(bus.results) > 5)
        kills = 0
        for _ in range(20):
            time.sleep(0.5)
            broker.stop(kill=True)
            time.sleep(0.1)
            broker.start()
            kills += 1
        camera_gone_and_drained(d)         # the camera goes away: what it selected must all arrive
        time.sleep(1.0)
        status = uplink_status(d)
    stats = cloud.stats
    want, crops = check_exactly_once(cloud, bus.results, bus.answers, FACE_RULE)
    counters = status["counters"]
    print(f"\n{kills} broker kills: {len(bus.results)} results on the bus, {len(want)} selected, "
          f"{len(crops)} crops; device sent {counters['sent']} (resent {counters['resent']}), "
          f"server dropped {stats['duplicates']} duplicates; frames gone {counters['frame_gone']}")
    assert len(want) >= 40 and counters["resent"] > 0, "the test must have made the device send again"
    assert status["outbox"]["dropped"] == 0
    # A packer more than 2 selected results behind may find a frame gone (docs/uplink.md): CI's loaded
    # host made 1 of 131 so. What this guards is the 4-slot ring that lost a quarter of the crops.
    assert counters["frame_gone"] <= len(want) // 20, counters
    assert len(crops) >= len(want) - counters["frame_gone"]


def test_daemon_restart_with_a_full_outbox_loses_nothing(broker, tmp_path, bundles_dir):
    """The broker is down while a camera streams faces: results and crops pile
    up in the outbox until it is more than half full. The daemon is SIGKILLed
    (a power cut), started again, the broker and `lited cloud` come up: all of
    it arrives, once."""
    broker.stop()
    write_video(tmp_path / "v.avi", frames=90, size=(320, 240))
    config = {"models": {"face": str(bundles_dir / "ultraface")}, "streams": [],
              "uplink": broker.uplink_config("dev1", ack="cloud", resend_after=1, streams={"*": FACE_RULE},
                                             outbox={"dir": str(tmp_path / "outbox"), "max_bytes": 384 << 10})}
    d = device(tmp_path, config)
    d.start()
    bus = Collector(d.pub)
    try:
        add_stream(d, {"name": "cam", "source": f"file://{tmp_path / 'v.avi'}?realtime=1&loop=1", "model": "face"})
        wait_until(lambda: uplink_status(d)["outbox"]["bytes"] > 200 << 10, 90)
        d.write_config({**config, "streams": []})
        d.signal(signal.SIGHUP)
        with d.client() as client:
            wait_until(lambda: not client.status()["streams"], 30)
        before = settled(d)
        d.proc.kill()                        # a power cut: no clean stop
        d.proc.wait()
    finally:
        bus.close()
        d.stop()
    outbox = before["outbox"]
    print(f"\noutbox before the restart: {outbox['queued']} records, {outbox['bytes']} of {outbox['max_bytes']} "
          f"bytes; dropped {outbox['dropped']}; frames gone {before['counters']['frame_gone']}")
    assert outbox["bytes"] > outbox["max_bytes"] // 2 and outbox["dropped"] == 0
    assert outbox["queued"] == outbox["next_seq"] - 1 == before["counters"]["queued"]
    d.start()
    cloud = drain(d, broker, tmp_path)
    ids = sorted(int(e["id"].rsplit(":", 1)[1]) for e in cloud.entries() if "id" in e)
    # every record stored before the power cut, once (then the new daemon's own events)
    assert ids[:outbox["queued"]] == list(range(1, outbox["queued"] + 1)) and len(ids) == len(set(ids))
    want = selected(bus.results, FACE_RULE)
    assert {(e["message"]["stream"], e["message"]["seq"]) for e in cloud.entries("result")} == set(want)
    crops = {(e["message"]["seq"], i) for e in cloud.entries("result") for i in e["message"]["crops"]}
    assert {(e["image"]["seq"], e["image"]["detection"]) for e in cloud.entries("crop")} == crops


def test_an_outbox_read_only_at_start_keeps_the_daemon_serving_and_its_backlog_is_sent(broker, tmp_path, bundles_dir):
    """An SD card remounted read-only (ext4's errors=remount-ro) under an outbox holding a backlog:
    the daemon refused to start (`uplink.outbox.dir: ...: Permission denied`), so cameras and local
    apps got nothing. It starts and streams; status says what fails; the backlog goes out, once; new
    records are refused and counted; once the directory is writable again, status clears."""
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("root without setpriv: a read-only directory is no obstacle to root")
    broker.stop()
    outbox = tmp_path / "outbox"
    config = {"models": {"face": str(bundles_dir / "ultraface")},
              "streams": [{"name": "cam", "source": "synth://?size=320x240&fps=10", "model": "face"}],
              "uplink": broker.uplink_config("dev1", ack="cloud", resend_after=1, status_interval=1,
                                             outbox={"dir": str(outbox)}),
              "http": {"listen": "127.0.0.1:0"}}

    def metrics(d: DaemonProcess) -> dict:
        """The uplink's samples on /metrics, as Prometheus's own parser reads them."""
        from prometheus_client.parser import text_string_to_metric_families

        with d.client() as client:
            url = "http://" + client.status()["http"]["listening"][0]
        text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text)
                for s in f.samples if s.name.startswith("lited_uplink_")}

    with device(tmp_path, config) as d:  # events pile up in the outbox while the broker is down
        wait_until(lambda: uplink_status(d)["outbox"]["queued"] >= 2, 30)
    os.chmod(outbox, 0o555)
    # root reads and writes anything: the daemon runs without that capability, as the service user would
    no_override = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps",
                   "-dac_override,-dac_read_search") if os.geteuid() == 0 else ()
    d = DaemonProcess(tmp_path / "d", config, wrapper=no_override)
    try:
        d.start()
        with Subscriber(d.pub, streams=["cam"]) as sub:
            assert wait_until(lambda: sub.recv(1), 30)["stream"] == "cam"  # local apps are served
        status = uplink_status(d)
        waiting = status["outbox"]["queued"]
        assert waiting >= 2 and "cannot write state.json: Permission denied" in status["outbox"]["problem"], status
        table = subprocess.run([sys.executable, "-m", "lited.cli", "ctl", "status", "--endpoint", d.req],
                               capture_output=True, text=True, timeout=30).stdout
        assert ", FAILING: " in table and "cannot write state.json: Permission denied" in table, table
        seen = metrics(d)  # and what a fleet's Prometheus alerts on
        assert seen[("lited_uplink_connected", ())] == 0 and seen[("lited_uplink_outbox_failing", ())] == 1, seen
        assert seen[("lited_uplink_outbox_records", ())] == waiting, seen
        broker.start()
        cloud = Cloud(broker, tmp_path)
        try:
            wait_until(lambda: len({e["id"] for e in cloud.entries() if "id" in e}) >= waiting, 60)
            wait_until(lambda: uplink_status(d)["outbox"]["refused"] > 0, 30)  # the daemon's new events
            wait_until(lambda: uplink_status(d)["outbox"]["queued"] == 0, 30)
            status = uplink_status(d)
            on_disk = list(outbox.glob("seg-*.log"))  # confirmed, and not removable: still counted
            assert (status["outbox"]["segments"], status["outbox"]["bytes"]) == \
                (len(on_disk), sum(p.stat().st_size for p in on_disk)) != (0, 0), status
            assert "cannot store them: Permission denied" in status["outbox"]["problem"], status
            os.chmod(outbox, 0o755)  # writable again: the next records (a reload's events) are stored, status clears
            d.signal(signal.SIGHUP)
            wait_until(lambda: not uplink_status(d)["outbox"]["problem"], 30)
            seen = metrics(d)
            assert seen[("lited_uplink_connected", ())] == 1 and seen[("lited_uplink_outbox_failing", ())] == 0
            assert seen[("lited_uplink_records_total", (("outcome", "acked"),))] >= waiting, seen
            assert seen[("lited_uplink_records_lost_total", (("reason", "refused"),))] >= 1, seen
            text = (Path(__file__).resolve().parent.parent / "docs" / "http.md").read_text()  # its alert rules
            named = set(re.findall(r"\blited_uplink_[a-z_]+", text[text.index("\nAlerts ("):]))
            assert named and named <= {name for name, _ in seen}, named - {name for name, _ in seen}
        finally:
            cloud.stop()
    finally:
        os.chmod(outbox, 0o755)
        d.stop()
    ids = [int(e["id"].rsplit(":", 1)[1]) for e in cloud.entries() if "id" in e]
    assert sorted(ids)[:waiting] == list(range(1, waiting + 1)) and len(ids) == len(set(ids)), ids
    log = d.output()
    assert "outbox: cannot write state.json" in log and "(failure 1)" in log, log[-3000:]
    assert "outbox: writing state.json again" in log, log[-3000:]


def test_full_outbox_disk_drops_oldest_counts_and_keeps_serving(broker, tmp_path, bundles_dir):
    """The outbox on a 1 MiB tmpfs, the broker down, whole frames attached: the
    disk fills, the oldest records go (counted), results keep flowing on the
    local bus; when the broker is back the newest records arrive, once."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (root needed): {r.stderr.decode().strip()}")
    broker.stop()
    write_video(tmp_path / "v.avi", frames=30, size=(320, 240))
    rule = {"labels": ["face"], "min_score": 0.7, "attach": "frame", "jpeg_quality": 95}
    d = device(tmp_path, {
        "models": {"face": str(bundles_dir / "ultraface")},
        "streams": [{"name": "cam", "source": f"file://{tmp_path / 'v.avi'}?loop=1", "model": "face"}],
        "uplink": broker.uplink_config("dev1", ack="cloud", resend_after=1, streams={"*": rule},
                                       outbox={"dir": str(mnt / "outbox"), "max_bytes": 64 << 20})})
    try:
        d.start()
        full = wait_until(lambda: (lambda u: u if u["outbox"]["dropped"] > 20 else None)(uplink_status(d)), 90)
        with Subscriber(d.pub, streams=["cam"]) as sub:
            seqs = [sub.recv(timeout=5)["seq"] for _ in range(20)]   # still serving locally
        assert seqs == sorted(seqs) and d.proc.poll() is None
        with d.client() as client:
            status = client.status()
            assert status["streams"][0]["state"] == "streaming"
            client.call("snapshot", stream="cam")
        print(f"\ndisk full: {full['outbox']['queued']} kept in {full['outbox']['bytes']} bytes, "
              f"{full['outbox']['dropped']} dropped, {full['outbox']['refused']} refused")
        d.config["streams"] = []
        d.write_config()
        d.signal(signal.SIGHUP)
        with d.client() as client:
            wait_until(lambda: not client.status()["streams"], 30)
        last = settled(d)["outbox"]
        cloud = drain(d, broker, tmp_path)
    finally:
        d.stop()
        subprocess.run(["umount", "-l", str(mnt)])
    ids = sorted(int(e["id"].rsplit(":", 1)[1]) for e in cloud.entries() if "id" in e)
    assert ids and ids == list(range(ids[0], last["next_seq"])), "the newest, contiguous, once each"
    assert ids[0] > full["outbox"]["dropped"], "the oldest were the ones dropped"


def test_an_outbox_unreadable_for_a_while_is_read_again_and_loses_nothing(broker, tmp_path, bundles_dir):
    """The daemon's open-files limit is lowered (prlimit, from outside) to the
    descriptors it holds while a camera streams faces: the uplink's sender
    cannot open the outbox's segments. It says so once, keeps trying, and
    when the limit is back sends what piled up: every selected result
    arrives once."""
    import resource

    with streaming_faces(broker, tmp_path, bundles_dir) as (d, bus, cloud):
        wait_until(lambda: len(selected(bus.results, FACE_RULE)) >= 3, 60)
        soft, hard = resource.prlimit(d.proc.pid, resource.RLIMIT_NOFILE)
        held = []  # the descriptors it keeps: a count taken while state.json was being written left room
        for _ in range(25):  # for one more, and the sender read on (a failure 1 run in 3 under load)
            held.append(len(os.listdir(f"/proc/{d.proc.pid}/fd")))
            time.sleep(0.02)
        held = min(held)
        resource.prlimit(d.proc.pid, resource.RLIMIT_NOFILE, (held, hard))
        try:
            wait_until(lambda: b"uplink: cannot read the outbox" in d.log_path.read_bytes(), 30)
            time.sleep(2.0)  # records pile up unsent (the bus carries on without new descriptors)
        finally:
            resource.prlimit(d.proc.pid, resource.RLIMIT_NOFILE, (soft, hard))
        wait_until(lambda: b"uplink: reading the outbox again" in d.log_path.read_bytes(), 30)
        starved = len(selected(bus.results, FACE_RULE))
        wait_until(lambda: len(selected(bus.results, FACE_RULE)) >= starved + 3, 60)
        camera_gone_and_drained(d)
        status = uplink_status(d)
    log = d.output()
    assert log.count("uplink: cannot read the outbox") == 1, log[-3000:]
    assert "Too many open files" in log
    want, _ = check_exactly_once(cloud, bus.results, bus.answers, FACE_RULE)
    print(f"\nopen-files limit {held} (soft {soft}): {len(want)} selected results, sent "
          f"{status['counters']['sent']}, all confirmed once")
    assert status["connected"] and status["outbox"]["dropped"] == 0 and len(want) >= 6


def test_window_bytes_bounds_what_is_in_flight_and_loses_nothing(broker, tmp_path, bundles_dir):
    """Whole frames of 1280x720 at quality 100 (over 64 KiB each) with `window_bytes` 64 KiB: one record in flight at a time (on a
    thin link 64 frames were minutes of paho's queue, the acknowledgements and pings behind them,
    and nothing was confirmed again), every selected frame at the server once."""
    rule = {"labels": ["face"], "min_score": 0.7, "attach": "frame", "jpeg_quality": 100}
    in_flight = []
    with streaming_faces(broker, tmp_path, bundles_dir, rule, (1280, 720), window_bytes=65536,
                         events=False) as (d, bus, cloud):
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            in_flight.append(uplink_status(d)["unconfirmed"])
            time.sleep(0.02)
        camera_gone_and_drained(d)
    frames = collections.Counter((e["image"]["stream"], e["image"]["seq"]) for e in cloud.entries("frame"))
    want = selected(bus.results, rule)
    print(f"\n{len(frames)} frames at the server ({len(want)} selected), at most {max(in_flight)} records in flight")
    assert set(frames) == set(want) and max(frames.values()) == 1 and len(want) >= 5, (len(frames), len(want))
    assert max(in_flight) == 1, collections.Counter(in_flight)


def test_a_broker_gone_silent_is_noticed_by_the_keepalive_and_loses_nothing(broker, tmp_path, bundles_dir):
    """The broker frozen (SIGSTOP: its connections stay open and say nothing, as on a link that died
    silently): the device drops the connection within about twice `keepalive`, says so once, and
    `last_error` says it was disconnected (paho tells a keepalive loss twice, and the second had made
    it "cannot connect"); thawed, the device connects again and every selected result arrives once."""
    with streaming_faces(broker, tmp_path, bundles_dir, keepalive=5) as (d, bus, cloud):
        wait_until(lambda: len(selected(bus.results, FACE_RULE)) >= 3, 60)
        broker.proc.send_signal(signal.SIGSTOP)
        frozen = time.monotonic()
        try:
            lost = wait_until(lambda: (lambda u: None if u["connected"] else u)(uplink_status(d)), 30)
            noticed = time.monotonic() - frozen
            time.sleep(1.0)  # results pile up in the outbox meanwhile
        finally:
            broker.proc.send_signal(signal.SIGCONT)
        wait_until(lambda: uplink_status(d)["connected"], 30)
        thawed = len(selected(bus.results, FACE_RULE))
        wait_until(lambda: len(selected(bus.results, FACE_RULE)) >= thawed + 3, 60)
        camera_gone_and_drained(d)
        status = uplink_status(d)
    log = d.output()
    print(f"\nbroker frozen: the device noticed after {noticed:.1f} s ({lost['last_error']!r})")
    assert lost["last_error"].lower() == "disconnected: keep alive timeout", lost["last_error"]
    assert noticed <= 2 * 5 + 3, noticed
    assert log.count("uplink: disconnected (") == 1, log[-3000:]
    want, _ = check_exactly_once(cloud, bus.results, bus.answers, FACE_RULE)
    assert status["outbox"]["dropped"] == 0 and len(want) >= 6, (status, len(want))


# -- the server side: a second model, answers, remote requests, health -----------------------------

def test_second_model_answers_remote_requests_and_last_will(broker, tmp_path, bundles_dir):
    """ultraface finds faces on the board, `lited cloud` classifies the crops
    with mobilenetv2 (a stand-in for a recognition model); answers reach the
    local bus; `lited remote` asks the device for status, snapshot, reload
    over MQTT; a vanished device is marked offline by its last will."""
    write_video(tmp_path / "v.avi", frames=30, size=(320, 240))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)     # systemd's notify socket, as a unit has it
    notify.bind(str(tmp_path / "notify.sock"))
    notes: list = []

    def read_notes() -> None:                # as systemd does (unread, the daemon's sends would block)
        with contextlib.suppress(OSError):
            while True:
                notes.append(notify.recv(4096).decode())
    threading.Thread(target=read_notes, daemon=True).start()
    d = device(tmp_path, {
        "models": {"face": str(bundles_dir / "ultraface")}, "status_interval": 0.5,
        "streams": [{"name": "cam", "source": f"file://{tmp_path / 'v.avi'}?loop=1&realtime=1", "model": "face"}],
        "uplink": broker.uplink_config("dev1", ack="cloud", streams={"cam": {**FACE_RULE, "max_rate": 4}},
                                       status_interval=1, outbox={"dir": str(tmp_path / "outbox")})},
               env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    d.start()
    cloud = watcher = None
    statuses: list = []
    remote = [sys.executable, "-m", "lited.cli", "remote", *broker.server_args(), "dev1"]
    try:
        cloud = Cloud(broker, tmp_path, bundle=bundles_dir / "mobilenetv2")
        watcher, _ = connected(broker.server_settings(), "status-watcher",
                               on_message=lambda c, u, m: statuses.append(json.loads(m.payload)))
        subscribe(watcher, "lited/dev1/status")
        with Subscriber(d.pub, streams=["cam"], answers=True) as sub:
            answer = wait_until(lambda: (lambda m: m if m and m["type"] == "answer" else None)(sub.recv(1)), 60)
        assert answer["model"] == "mobilenetv2" and len(answer["classes"]) == 5
        assert answer["detection"] == 0 and answer["round_trip_ms"] > 0
        out = subprocess.run([*remote, "status"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        status = json.loads(out.stdout)
        assert status["uplink"]["device"] == "dev1" and status["streams"][0]["stream"] == "cam"
        snap = tmp_path / "snap.jpg"
        out = subprocess.run([*remote, "snapshot", "--stream", "cam", "--out", str(snap)], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0 and snap.read_bytes()[:2] == b"\xff\xd8", out.stderr
        out = subprocess.run([*remote, "reload"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and json.loads(out.stdout)["reloaded"] == ["face"], out.stderr
        # not offered over MQTT / no reply topic of this device: refused
        from lited.cloud import remote_call

        assert remote_call(broker.server_settings(), "dev1", "infer", {})["error"]["code"] == "bad_request"
        reply = remote_call(broker.server_settings(), "dev1", "reload", {"bundle": "/tmp"})
        assert "params.bundle" in reply["error"]["message"]
        from lited.mqtt_link import publish_properties

        cloud_client, got = connected(broker.server_settings(), "cloud-rogue")
        cloud_client.publish("lited/dev1/req", b'{"v":1,"method":"status"}', qos=1)
        # a wildcard reply topic used to kill paho's network thread for good (the uplink then said "connected")
        for bad in ("lited/dev1/resp/#", "lited/dev1/resp/+", "lited/dev1/resp/a/b"):
            cloud_client.publish("lited/dev1/req", b'{"v":1,"id":1,"method":"ping"}', qos=1,
                                 properties=publish_properties(response_topic=bad))
        wait_until(lambda: uplink_status(d)["counters"]["requests_refused"] >= 4, 10)
        assert subscribe(cloud_client, "lited/dev1/resp/rogue") == [1]
        cloud_client.publish("lited/dev1/req", b'{"v":true,"id":9,"method":"ping"}', qos=1,
                             properties=publish_properties(response_topic="lited/dev1/resp/rogue"))
        topic, payload = wait_until(lambda: got[0] if got else None, 10)
        said = json.loads(payload)  # as on the bus: v is the integer 1, and a readable request's id comes back
        assert (said["id"], said["ok"], said["error"]["code"]) == (9, False, "bad_request"), said
        bad = uplink_status(d)["counters"]["bad_messages"]  # an answer to a crop this device never sent
        epoch = answer["id"].split(":")[1]
        for forged_id in ("dev1:00000000:999999", f"dev1:{epoch}:0", f"dev1:{epoch}:99999999"):
            forged = {**answer, "id": forged_id}
            forged.pop("round_trip_ms", None)
            cloud_client.publish("lited/dev1/answers/cam", json.dumps(forged).encode(), qos=1)
        wait_until(lambda: uplink_status(d)["counters"]["bad_messages"] == bad + 3, 10)
        # poison: arrays nested past the JSON parser's depth, an integer msgpack cannot carry; each used to end
        # paho's network thread (status still said connected) and came back from the broker after a restart
        deep = b"[" * 5000 + b"]" * 5000
        event_id = next(e["id"] for e in cloud.entries("event") if e["device"] == "dev1")
        huge = {**answer, "id": event_id, "classes": [{"label": "x", "score": 10 ** 30}]}
        huge.pop("round_trip_ms", None)
        for topic, payload in (("lited/dev1/answers/cam", deep), ("lited/dev1/ack", deep),
                               ("lited/dev1/answers/cam", json.dumps(huge).encode())):
            cloud_client.publish(topic, payload, qos=1)
        wait_until(lambda: uplink_status(d)["counters"]["bad_messages"] == bad + 6, 10)
        cloud_client.publish("lited/dev1/req", b'{"v":1,"id":3,"params":' + deep + b'}', qos=1,
                             properties=publish_properties(response_topic="lited/dev1/resp/rogue"))
        topic, payload = wait_until(lambda: got[1] if len(got) > 1 else None, 10)
        assert json.loads(payload)["error"] == {"code": "bad_request", "message": "request: nested too deep"}
        # and a device's poison must not end `lited cloud`'s worker: dev2's next result is still recorded
        dev2, _ = connected(broker.device_settings("dev2"), "dev2")
        result = {"v": 1, "type": "result", "stream": "x", "seq": 1, "detections": [], "classes": []}
        for seq, payload in ((1, deep), (2, json.dumps(result).encode())):
            dev2.publish("lited/dev2/results/x", payload, qos=1,
                         properties=publish_properties(user=[("lited-id", f"dev2:abcdef01:{seq}")]))
        wait_until(lambda: [e for e in cloud.entries("result") if e["device"] == "dev2"], 10)
        close(dev2)
        cloud_client.publish("lited/dev1/req", b'{"v":1,"id":[NaN],"method":"ping"}', qos=1,
                             properties=publish_properties(response_topic="lited/dev1/resp/rogue"))
        topic, payload = wait_until(lambda: got[2] if len(got) > 2 else None, 10)
        said = json.loads(payload, parse_constant=lambda c: pytest.fail(f"{c} in a reply: not JSON"))
        assert said["id"] is None and "NaN in it: JSON has neither" in said["error"]["message"], said
        close(cloud_client)
        out = subprocess.run([*remote, "ping"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr  # the uplink still answers
        online = [s for s in statuses if s["state"] == "online"][-1]
        # one datagram may carry READY=1 and STATUS= together, as systemd allows
        line = wait_until(lambda: next((ln for n in reversed(notes) for ln in n.splitlines()
                                        if "uplink up, outbox" in ln), None), 10)
        assert line.startswith("STATUS=") and " dropped" in line, line   # the systemd status line has the outbox
        assert online["uplink"]["connected"] and online["streams"][0]["stream"] == "cam"
        first = next(s for s in statuses if s["state"] == "online")  # at connect, before the model was warm
        assert [s["stream"] for s in first["streams"]] == ["cam"], first  # it listed no stream
        d.proc.kill()                        # no clean DISCONNECT: the broker publishes the last will
        wait_until(lambda: statuses and statuses[-1]["state"] == "offline", 20)
    finally:
        notify.close()
        if watcher is not None:
            close(watcher)
        stats = cloud.stop() if cloud else {}
        d.stop()
    assert stats["crops"] >= 1 and stats["answered"] >= stats["crops"] and stats["bad"] == 1
    # the bad one is not a result too (it was counted in both: the black-box uplink audit)
    assert (stats["results"], stats["events"]) == (len(cloud.entries("result")), len(cloud.entries("event"))), stats


def test_the_last_will_says_when_the_device_last_connected(broker, tmp_path):
    """uplink.md: the will is written at connect, its `ts` when the device connected; it said the
    uplink's start after every reconnect (the black-box uplink audit)."""
    statuses: list = []
    d = device(tmp_path, {"models": {}, "uplink": broker.uplink_config("dev1", keepalive=5)}).start()
    watcher = None
    try:
        wait_until(lambda: uplink_status(d)["connected"], 30)
        time.sleep(1)  # the first connect's time and the reconnect's a second apart
        broker.stop(kill=True)
        restarted = time.time()
        broker.start()
        wait_until(lambda: uplink_status(d)["connected"], 30)
        watcher, _ = connected(broker.server_settings(), "will-watcher",
                               on_message=lambda c, u, m: statuses.append(json.loads(m.payload)))
        subscribe(watcher, "lited/dev1/status")
        d.proc.kill()  # no clean DISCONNECT: the broker publishes the will
        offline = wait_until(lambda: next((s for s in statuses if s["state"] == "offline"), None), 30)
        assert offline["ts"] >= restarted, (offline, restarted)
    finally:
        if watcher is not None:
            close(watcher)
        d.stop()


def test_workers_in_one_group_share_the_load(broker, tmp_path, bundles_dir):
    """Two `lited cloud` workers in one shared-subscription group: each gets
    part of the crops and results, together all of them, each once."""
    write_video(tmp_path / "v.avi", frames=45, size=(320, 240))
    d = device(tmp_path, {
        "models": {"face": str(bundles_dir / "ultraface")}, "streams": [],
        # (the daemon's `ready` event went up before any worker subscribed: the broker dropped it and it
        # is sent again after resend_after)
        "uplink": broker.uplink_config("dev1", ack="cloud", resend_after=3, streams={"*": FACE_RULE},
                                       outbox={"dir": str(tmp_path / "outbox")})})
    d.start()
    clouds = []
    try:
        clouds = [Cloud(broker, tmp_path, client_id=f"cloud-{c}") for c in "ab"]
        add_stream(d, {"name": "cam", "source": f"file://{tmp_path / 'v.avi'}", "model": "face", "slots": 64})
        with d.client() as client:
            wait_until(lambda: [s["state"] for s in client.status()["streams"]] == ["ended"], 60)
        wait_until(lambda: (lambda u: u["outbox"]["queued"] == 0 and u["unconfirmed"] == 0)(settled(d)), 60)
    finally:
        stats = [c.stop() for c in clouds]
        d.stop()
    per_worker = [[e["id"] for e in c.entries() if "id" in e] for c in clouds]
    print(f"\nshared subscription: worker a {len(per_worker[0])}, worker b {len(per_worker[1])} messages")
    assert all(len(ids) >= 5 for ids in per_worker), per_worker
    ids = per_worker[0] + per_worker[1]
    assert len(ids) == len(set(ids)) and sum(s["received"] for s in stats) == len(ids)
    assert sorted(int(i.rsplit(":", 1)[1]) for i in ids) == list(range(1, len(ids) + 1))


# -- config ----------------------------------------------------------------------------------------

def test_uplink_config_problems_name_their_field(tmp_path):
    broker_tool.make_pki(tmp_path, ())  # ca.crt
    (tmp_path / "empty.password").write_text("\n")  # passed, then "Not authorized" at every connect
    good = {"models": {"m": str(tmp_path)}, "streams": [{"name": "cam", "source": "synth://"}],
            "uplink": {"broker": "mqtts://127.0.0.1:8883", "device": "dev1", "ca": str(tmp_path / "ca.crt"),
                       "streams": {"cam": {"labels": ["face"], "attach": "crops"}}}}
    cfg = parse_config(good, base_dir=tmp_path)
    assert cfg.uplink.rule_for("cam").attach == "crops" and cfg.uplink.outbox_dir == cfg.state_dir / "outbox"
    cases = [({"broker": "http://x"}, "uplink.broker"), ({"device": "a/b"}, "uplink.device"),
             ({"device": "cloud"}, "uplink.device"), ({"broker": "mqtt://u:p@host"}, "uplink.broker"),
             ({"ca": "/nonexistent.crt"}, "uplink.ca"), ({"cert": str(tmp_path / "ca.crt")}, "uplink.key"),
             ({"password_file": str(tmp_path / "empty.password")}, "uplink.password_file"),
             ({"ack": "maybe"}, "uplink.ack"), ({"window": 0}, "uplink.window"), ({"bogus": 1}, "uplink.bogus"),
             ({"outbox": {"max_bytes": 10}}, "uplink.outbox.max_bytes"),
             ({"outbox": {"dir": str(tmp_path / "ca.crt" / "outbox")}}, "uplink.outbox.dir"),  # under a file
             ({"outbox": {"dir": "/proc/lited-outbox"}}, "uplink.outbox.dir"),  # cannot be made, even as root
             ({"streams": {"nope": {}}}, "uplink.streams.nope"),
             ({"streams": {"cam": {"attach": "video"}}}, "uplink.streams.cam.attach"),
             ({"streams": {"cam": {"min_score": 2}}}, "uplink.streams.cam.min_score"),
             ({"streams": {"cam": {"labels": "face"}}}, "uplink.streams.cam.labels")]
    for change, field in cases:
        with pytest.raises(ConfigError) as info:
            parse_config({**good, "uplink": {**good["uplink"], **change}}, base_dir=tmp_path)
        assert f"{field}:" in str(info.value), (change, info.value)


def test_tls_files_are_read_at_config_check_naming_the_field(broker, tmp_path):
    """A CA that is not PEM, a key of another certificate, a directory: `config
    check` (and so serve) names the field and file, not OpenSSL's words alone."""
    other = tmp_path / "other"
    broker_tool.make_pki(other, ("dev1",))
    pki = broker.pki
    good = {"models": {"m": str(tmp_path)}, "streams": [{"name": "cam", "source": "synth://"}],
            "uplink": {**broker.uplink_config("dev1"), "cert": str(pki / "cloud.crt"), "key": str(pki / "cloud.key")}}
    parse_config(good, base_dir=tmp_path)
    cases = [({"ca": str(pki / "ca.key")}, f"uplink.ca: {pki / 'ca.key'}: no PEM certificate in it"),
             ({"ca": str(pki)}, f"uplink.ca: {pki}: not a regular file (a directory)"),
             ({"ca": "/dev/null"}, "uplink.ca: /dev/null: not a regular file (a character device)"),
             ({"cert": str(pki / "cloud.key")}, f"uplink.cert: {pki / 'cloud.key'}: no PEM certificate in it"),
             ({"key": str(other / "dev1.key")}, f"uplink.key: {other / 'dev1.key'}: not the key of that certificate"),
             ({"key": str(pki / "cloud.crt")}, f"uplink.key: {pki / 'cloud.crt'}: not a PEM private key")]
    for change, text in cases:
        with pytest.raises(ConfigError) as info:
            parse_config({**good, "uplink": {**good["uplink"], **change}}, base_dir=tmp_path)
        assert text in str(info.value) and "_ssl.c" not in str(info.value), (change, str(info.value))
    out = subprocess.run([sys.executable, "-m", "lited.cli", "cloud", "--broker", broker.server_url, "--ca",
                          str(tmp_path / "none.crt")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and f"--ca: {tmp_path / 'none.crt'}: no such file" in out.stderr, out.stderr


def test_a_refused_tls_handshake_is_said_once_with_its_reason(broker, tmp_path, bundles_dir):
    """paho retries and keeps the error to itself; lited says why, once: in the
    log, in the uplink status and in `lited cloud` and `lited remote`."""
    other = tmp_path / "other"  # (the fixture started the broker: a second start left a mosquitto behind)
    broker_tool.make_pki(other, ("cloud",))
    refused = "TLS: the broker's certificate was refused: certificate verify failed"
    config = {"models": {"det": str(bundles_dir / "ultraface")}, "streams": [{"name": "cam", "source": "synth://"}],
              "uplink": {**broker.uplink_config("dev1"), "ca": str(other / "ca.crt")}}
    with device(tmp_path, config) as d:
        wait_until(lambda: refused in uplink_status(d)["last_error"], 30)
        time.sleep(3)  # paho retries every 0.2-5 s meanwhile
        assert d.output().count(refused) == 1, d.output()
        table = subprocess.run([sys.executable, "-m", "lited.cli", "ctl", "status", "--endpoint", d.req],
                               capture_output=True, text=True, timeout=30).stdout
        assert f"uplink: {broker.device_url} as dev1, NOT CONNECTED (cannot connect to" in table, table
    # no client certificate for a listener that wants one: TLS 1.3 refuses it after the handshake, and paho
    # says so as a disconnect; the device never connected, and `last_error` said "disconnected: ..."
    config["uplink"] = broker.uplink_config("dev1", broker=broker.server_url)
    (tmp_path / "nocert").mkdir()
    with device(tmp_path / "nocert", config) as d:
        error = wait_until(lambda: uplink_status(d)["last_error"], 30)
        assert error.startswith(f"cannot connect to {broker.server_url}: TLS: the broker refused the handshake"), error
    args = ["--broker", broker.server_url, "--ca", str(other / "ca.crt"), "--cert", str(other / "cloud.crt"),
            "--key", str(other / "cloud.key")]
    out = subprocess.run([sys.executable, "-m", "lited.cli", "cloud", *args, "--duration", "4"],
                         capture_output=True, text=True, timeout=60)
    assert out.stderr.count(refused) == 1, out.stderr
    out = subprocess.run([sys.executable, "-m", "lited.cli", "remote", *args, "--timeout", "3", "dev1", "status"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and refused in out.stderr, out.stderr
    plain = free_tcp_listener()
    out = subprocess.run([sys.executable, "-m", "lited.cli", "remote", "--broker", f"mqtts://127.0.0.1:{plain[1]}",
                          "--timeout", "3", "dev1", "status"], capture_output=True, text=True, timeout=60)
    plain[0].close()
    assert "mqtt:// port given as mqtts://" in out.stderr, out.stderr


def test_a_refused_login_is_said_once_and_a_refused_request_at_once(broker, tmp_path, bundles_dir):
    """A wrong password was logged at every retry (every 5 s) and `last_error` said "disconnected:
    Protocol error"; `lited remote` publishing where the ACL says no waited its whole timeout and
    said "no reply"."""
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    refused = "the broker refused the connection: Not authorized"
    config = {"models": {"det": str(bundles_dir / "ultraface")}, "streams": [{"name": "cam", "source": "synth://"}],
              "uplink": {**broker.uplink_config("dev1"), "password_file": str(wrong)}}
    with device(tmp_path, config) as d:
        wait_until(lambda: refused in uplink_status(d)["last_error"], 30)
        time.sleep(8)  # paho retries every 0.2-5 s meanwhile
        assert d.output().count(refused) == 1, d.output()
        assert uplink_status(d)["last_error"] == f"cannot connect to {broker.device_url}: {refused}"
    # `lited cloud` said "connection refused: Not authorized" at every retry; `lited remote` not in uplink.md's words
    login = ["--broker", broker.device_url, "--ca", broker.ca, "--username", "dev1", "--password-file", str(wrong)]
    out = subprocess.run([sys.executable, "-m", "lited.cli", "cloud", *login, "--duration", "8"],
                         capture_output=True, text=True, timeout=60)
    assert out.stderr.count(f"cloud: {broker.device_url}: {refused}; retrying") == 1, out.stderr
    assert "connection refused" not in out.stderr, out.stderr
    out = subprocess.run([sys.executable, "-m", "lited.cli", "remote", *login, "--timeout", "30", "dev1", "ping"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 3 and out.stderr.strip() == \
        f"lited: no connection to {broker.device_url} within 30 s: {refused}", (out.returncode, out.stderr)
    # a device's own login asking another device: its publish to dev2/req is refused by the ACL
    out = subprocess.run([sys.executable, "-m", "lited.cli", "remote", "--broker", broker.device_url, "--ca", broker.ca,
                          "--username", "dev1", "--password-file", broker.password_file("dev1"), "--timeout", "30",
                          "dev2", "ping"], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "the broker refused the request: Not authorized" in out.stderr, out.stderr


def free_tcp_listener() -> tuple:
    """A loopback socket that accepts and closes, as a plain-MQTT port does to a TLS hello."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            conn.recv(1024)
            conn.sendall(b"\x20\x02\x00\x00")  # bytes of MQTT, not of TLS
            conn.close()
    threading.Thread(target=serve, daemon=True).start()
    return sock, sock.getsockname()[1]


def test_cloud_and_remote_refuse_bad_input_in_one_line(tmp_path):
    cases = [(["cloud", "--broker", "http://broker"], "expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"),
             (["cloud", "--broker", "mqtt://127.0.0.1:1", "--bundle", str(tmp_path / "none")], str(tmp_path / "none")),
             (["remote", "--broker", "mqtts://u:p@host", "dev1", "status"], "credentials go in their own fields"),
             # it connected to 1883 in silence (the black-box uplink audit)
             (["remote", "--broker", "mqtt://127.0.0.1:0", "dev1", "status"], "'mqtt://127.0.0.1:0': port 0: expected 1")]
    for args, text in cases:
        out = subprocess.run([sys.executable, "-m", "lited.cli", *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and text in out.stderr and out.stderr.count("\n") == 1, (args, out.stderr)


def test_remote_messages_that_say_two_things_or_name_no_stream_are_refused():
    """A broker peer sent {"method": "ping", "method": "reload"} (a reload ran), `force` in a
    reload (which HTTP refuses), and an answer for stream "zzz\\nfake" (published as that topic)."""
    from lited import uplink_protocol as up

    with pytest.raises(up.UplinkMessageError, match="^request: 'method' is given twice$"):
        up.parse_request(b'{"v": 1, "id": 1, "method": "ping", "method": "reload"}')
    with pytest.raises(up.UplinkMessageError, match=r"^params.force: not accepted over MQTT \(lited ctl reload"):
        up.parse_request(b'{"v": 1, "id": 1, "method": "reload", "params": {"force": true}}')
    assert up.parse_request(b'{"v": 1, "id": 1, "method": "reload", "params": {"model": "m"}}')[1] == "reload"
    with pytest.raises(up.UplinkMessageError, match=r"^answer.stream: 'zzz\\nfake' may hold only"):
        up.parse_answer(b'{"v": 1, "id": "x", "stream": "zzz\\nfake", "seq": 1}')
    with pytest.raises(up.UplinkMessageError, match="^answer.stream: '_daemon' is reserved"):
        up.parse_answer(b'{"v": 1, "id": "x", "stream": "_daemon", "seq": 1}')
    assert up.parse_answer(b'{"v": 1, "id": "x", "stream": "cam0", "seq": 1}')["stream"] == "cam0"
    # NaN, as Python reads it, went into `lited cloud --record`'s lines, which no other JSON reader takes
    for constant in ("NaN", "Infinity", "-Infinity"):
        with pytest.raises(up.UplinkMessageError, match=rf"^result: {constant} in it: JSON has neither NaN nor "):
            up.parse_device_message(b'{"v": 1, "type": "result", "stream": "x", "seq": 1, "detections": '
                                    b'[{"score": ' + constant.encode() + b'}], "classes": []}', "result")


def test_a_crop_whose_header_claims_a_huge_picture_is_answered_with_an_error_undecoded(broker, tmp_path):
    """A device sent a 631-byte JPEG whose header said 30000x30000: `lited cloud` decoded it,
    5.4 GB at its peak. Now its header is read first, as the daemon's `infer` does."""
    import struct

    import cv2
    import numpy as np
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    jpeg = bytearray(cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    i = 2
    while jpeg[i + 1] not in (0xC0, 0xC1, 0xC2):  # to the start-of-frame segment: its height and width
        i += 2 + struct.unpack(">H", jpeg[i + 2:i + 4])[0]
    jpeg[i + 5:i + 9] = struct.pack(">HH", 30000, 30000)
    cloud = Cloud(broker, tmp_path)
    dev, got = connected(broker.device_settings("dev1"), "dev1")
    try:
        subscribe(dev, "lited/dev1/answers/#")
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("lited-id", "dev1:7:1"), ("stream", "cam0"), ("seq", "1"), ("detection", "0")]
        dev.publish("lited/dev1/crops/cam0", bytes(jpeg), qos=1, properties=props)
        wait_until(lambda: got, 20)
        answer = json.loads(got[0][1])
        assert answer["id"] == "dev1:7:1" and answer["error"] == "30000x30000 is over 67108864 pixels", answer
    finally:
        close(dev)
        counters = cloud.stop()
    assert counters["crops"] == 1, counters
