"""A config that cannot work (issue 20, item 15): `lited serve` refuses it
with one line naming the field, exit 2, before anything starts. The
tester got a 19-line ZMQError traceback for `pub_hwm: -5`, a 27-line one
for a model path that is a symlink loop, defaults instead of `slots`,
`stall_timeout` or `max_request_bytes` of 0, `too_large` for every request
with `max_request_bytes: -1`, and 60 events in 5 s with `stall_timeout: -1`.
A config file that is a FIFO or /dev/zero is refused too (it would block,
or never end).
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from conftest import DEMO_BUNDLE

BASE = {"models": {"ocr": str(DEMO_BUNDLE)}, "streams": [{"name": "cam", "source": "synth://?fps=5"}]}


def capped() -> None:
    """At most 4 GB of address space: a `lited serve` that reads /dev/zero whole fails, not the machine."""
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def serve(path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lited.cli", "serve", "--config", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=capped)


def with_stream(**fields) -> dict:
    return {**BASE, "streams": [{**BASE["streams"][0], **fields}]}


def test_values_that_cannot_work_are_one_line_exit_2_with_the_field(tmp_path):
    (tmp_path / "loop").symlink_to("loop")  # a symlink loop
    cases = {
        "pub_hwm -5": ({**BASE, "limits": {"pub_hwm": -5}}, "limits.pub_hwm: expected an integer from 1"),
        "model path a symlink loop": ({**BASE, "models": {"ocr": "loop"}}, "models.ocr: 'loop' cannot be resolved"),
        "slots -1": (with_stream(slots=-1), "streams[0].slots: expected an integer from 0 to 64, got -1"),
        "stall_timeout 0": (with_stream(stall_timeout=0), "streams[0].stall_timeout: expected a number above 0"),
        "stall_timeout -1": (with_stream(stall_timeout=-1), "streams[0].stall_timeout: expected a number above 0"),
        "max_request_bytes 0": ({**BASE, "limits": {"max_request_bytes": 0}},
                                "limits.max_request_bytes: expected an integer from 1024"),
        "max_request_bytes -1": ({**BASE, "limits": {"max_request_bytes": -1}},
                                 "limits.max_request_bytes: expected an integer from 1024"),
        "engine_timeout 0": ({**BASE, "limits": {"engine_timeout": 0}},
                             "limits.engine_timeout: expected a number above 0"),
        "max_inflight_bytes under max_request_bytes": ({**BASE, "limits": {"max_inflight_bytes": 1 << 20}},
                                                       "limits.max_inflight_bytes: 1048576 is less than "
                                                       "limits.max_request_bytes (16777216)"),
        "max_clients 0": ({**BASE, "limits": {"max_clients": 0}}, "limits.max_clients: expected an integer from 1"),
        "group that does not exist": ({**BASE, "group": "nosuchgroup"}, "group: no such group 'nosuchgroup'"),
    }
    procs = {}
    for name, (config, _) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.json"
        path.write_text(json.dumps(config))
        procs[name] = serve(path)
    os.mkfifo(tmp_path / "fifo.json")
    specials = {"config is a FIFO": (tmp_path / "fifo.json", "fifo.json: not a regular file (a FIFO)"),
                "config is /dev/zero": (Path("/dev/zero"), "/dev/zero: not a regular file (a character device)")}
    for name, (path, _) in specials.items():
        procs[name] = serve(path)
    expected = {**{k: v[1] for k, v in cases.items()}, **{k: v[1] for k, v in specials.items()}}
    outcomes = {}
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            outcomes[name] = ("still running after 60 s", err)
            continue
        outcomes[name] = (proc.returncode, err)
    print("\nRELIABILITY config: " + "; ".join(f"{k}: exit {v[0]}, {v[1].count(chr(10))} line(s)"
                                                for k, v in outcomes.items()))
    for name, (code, err) in outcomes.items():
        assert code == 2 and err.count("\n") == 1 and expected[name] in err, (name, code, err)


def test_a_reload_names_the_fields_it_does_not_apply(tmp_path, bundles_dir):
    """A reload took a new runtime_dir or endpoints in silence (`lited ctl` then looked for the daemon
    where it was not); the limits and the rest likewise."""
    import time

    from daemon_process import DaemonProcess

    # an uplink whose broker is not there (it only retries, on loopback): a reload took its `ack` and
    # `outbox.max_bytes` in silence (an uplink audit)
    uplink = {"broker": "mqtt://127.0.0.1:9", "device": "d1", "ack": "cloud"}
    config = {"models": {"face": str(bundles_dir / "ultraface")}, "state_dir": str(tmp_path / "state"),
              "uplink": uplink}
    d = DaemonProcess(tmp_path, config).start()
    try:
        d.write_config({**config, "runtime_dir": str(tmp_path / "elsewhere"), "limits": {"max_clients": 4},
                        "uplink": {**uplink, "ack": "broker", "outbox": {"max_bytes": 8 << 20}}})
        with d.client(timeout=60) as client:  # the running daemon, at the sockets it has
            reply = client.reload(timeout=60)
        assert reply["needs_restart"] == ["runtime_dir", "endpoints.pub", "endpoints.req", "limits.max_clients",
                                          "uplink.ack", "uplink.outbox.max_bytes"], reply
        deadline = time.monotonic() + 10
        while "restart lited to apply" not in d.output():
            assert time.monotonic() < deadline, d.output()[-2000:]
            time.sleep(0.1)
        assert "runtime_dir, endpoints.pub, endpoints.req, limits.max_clients, uplink.ack, uplink.outbox.max_bytes " \
               "changed in the config: restart lited to apply" in d.output(), d.output()[-2000:]
    finally:
        assert d.stop() == 0, d.output()[-3000:]


def test_a_reload_that_adds_a_model_records_it_beside_the_kept_ones(tmp_path, bundles_dir):
    """docs/protocol.md: `last_reload.models` and the reload event's `detail` name each model reloaded
    or added; one added beside a model kept was in the reply's `reloaded` only (the black-box protocol
    audit)."""
    from daemon_process import DaemonProcess
    from soak import Recorder

    config = {"models": {"face": str(bundles_dir / "ultraface")}}
    d = DaemonProcess(tmp_path, config).start()
    events = Recorder(d.pub)
    try:
        d.write_config({"models": {**config["models"], "det": str(bundles_dir / "fastestdet")}})
        with d.client(timeout=60) as client:
            reply = client.reload(timeout=60)
            status = client.status()
        models = status["models"]
        said = ", ".join(f"{key} {models[key]['name']} {models[key]['version']}" for key in ("face", "det"))
        assert reply["reloaded"] == status["last_reload"]["reloaded"] == ["face", "det"], (reply, status["last_reload"])
        assert status["last_reload"]["models"] == said, status["last_reload"]
        event = events.wait(lambda seen: [m for _, m in seen if m.get("event") == "reload"], stream="_daemon")[0]
        assert event["detail"] == said and event["ok"] is True, event
    finally:
        events.close()
        assert d.stop() == 0, d.output()[-3000:]


def _engine_children(pid: int) -> list:
    """The daemon's engine processes (its children running lited.engine_process)."""
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += (task / "children").read_text().split()
    return [int(k) for k in kids if b"lited.engine_process" in Path(f"/proc/{k}/cmdline").read_bytes()]


def test_config_check_and_serve_name_every_problem_of_what_the_config_names(tmp_path):
    """A `group` that does not exist hid every bundle problem, and `lited serve` named only the first
    bad bundle, without its field (config check named them all): one pass for both now."""
    path = tmp_path / "lited.json"
    path.write_text(json.dumps({"models": {"a": "/nonexist1", "b": "/nonexist2"}, "group": "nosuchgroup"}))
    expected = (f"lited: config {path}: group: no such group 'nosuchgroup'; models.a: bundle /nonexist1: not a "
                "directory; models.b: bundle /nonexist2: not a directory\n")
    check = subprocess.run([sys.executable, "-m", "lited.cli", "config", "check", "--config", str(path)],
                           capture_output=True, text=True, timeout=60)
    proc = serve(path)
    out, err = proc.communicate(timeout=60)
    assert (check.returncode, check.stderr) == (2, expected)
    assert (proc.returncode, err) == (2, expected)
    assert not (tmp_path / "run").exists()


def test_a_config_of_nested_yaml_aliases_is_refused_in_one_line_at_once(tmp_path):
    """601 bytes of YAML aliases nested 9 deep are 9^9 items: the message writing the bad value
    whole took `lited config check` 40 s and 4 GB (a reload under the unit's MemoryMax=1G:
    the service killed)."""
    levels = ["a: &a [" + ", ".join(['"x"'] * 9) + "]"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        levels.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    path = tmp_path / "lited.yaml"
    path.write_text("anchors:\n" + "".join(f"  {line}\n" for line in levels) + "request_workers: *i\n")
    proc = subprocess.run([sys.executable, "-m", "lited.cli", "config", "check", "--config", str(path)],
                          capture_output=True, text=True, timeout=30, preexec_fn=lambda: resource.setrlimit(
                              resource.RLIMIT_AS, (1 << 30, 1 << 30)))
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr[-500:]
    assert 'request_workers: expected an integer from 1 to 64, got [[[[[[[[["x", "x"' in proc.stderr, proc.stderr


def test_a_reload_checks_the_config_as_a_start_does_and_leaves_ended_streams_alone(tmp_path, bundles_dir):
    """Found by a black-box audit of docs/config.md: a reload named only the first bad bundle, without
    its field; writing out the policy a stream had by default restarted it; a stream whose file had
    ended kept its engine process (142 MB) and got a new one, and a `model` event, at every reload."""
    import time

    from conftest import write_video
    from daemon_process import DaemonProcess

    write_video(tmp_path / "once.avi", frames=6)
    face = str(bundles_dir / "ultraface")
    streams = [{"name": "once", "source": f"file://{tmp_path}/once.avi"},
               {"name": "live", "source": "synth://?size=320x240&fps=5"}]
    config = {"models": {"face": face}, "streams": streams}
    # a watchdog: a stream whose runner stopped at its end must not look stale
    with DaemonProcess(tmp_path, config, env={"WATCHDOG_USEC": "2000000"}) as d:
        with d.client(timeout=60) as client:
            def states() -> dict:
                return {s["stream"]: s for s in client.status()["streams"]}
            deadline = time.monotonic() + 60
            while not (states()["once"]["state"] == "ended" and states()["live"]["state"] == "streaming"):
                assert time.monotonic() < deadline, client.status()
                time.sleep(0.2)
            assert states()["once"]["model"]["engine_pid"] is None
            deadline = time.monotonic() + 10
            while len(_engine_children(d.proc.pid)) != 1:  # the live stream's only
                assert time.monotonic() < deadline, _engine_children(d.proc.pid)
                time.sleep(0.2)

            d.write_config({"models": {"face": face},
                            "streams": [streams[0], {**streams[1], "policy": "latest"}]})  # the default, written out
            reply = client.reload(timeout=60)
            assert (reply["started"], reply["stopped"]) == ([], []), reply
            time.sleep(3)  # past the watchdog's 2 s
            status = client.status()
            assert status["watchdog_stale"] == [], status["watchdog_stale"]
            assert {s["stream"]: s["state"] for s in status["streams"]} == {"once": "ended", "live": "streaming"}
            assert states()["once"]["model"]["engine_pid"] is None and len(_engine_children(d.proc.pid)) == 1

            d.write_config({**d.config, "models": {"face": face, "a": "/nonexist1", "b": "/nonexist2"},
                            "streams": [{**s, "model": "face"} for s in d.config["streams"]]})
            from lited.client import ClientError
            try:
                client.reload(timeout=60)
                raise AssertionError("a reload with two missing bundles passed")
            except ClientError as exc:
                error = str(exc)
            assert (f"config {d.config_path}: models.a: bundle /nonexist1: not a directory; models.b: bundle "
                    "/nonexist2: not a directory; keeping the running config") in error, error
            assert states()["live"]["state"] == "streaming"


def test_a_reload_whose_new_stream_cannot_start_changes_nothing(tmp_path, bundles_dir):
    """A recheck of the config audit: a reload adding a good stream and one whose model fails at
    warm-up (a decoder that cannot read its outputs: `config check` passes it) swapped every model
    and started the good stream, then said `failed` ("nothing changes", config.md)."""
    import shutil
    import time

    from daemon_process import DaemonProcess
    from lited.client import ClientError

    face = bundles_dir / "ultraface"
    bad = tmp_path / "bad_face"
    shutil.copytree(face, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["decoder"] = {"type": "gfl"}
    (bad / "manifest.json").write_text(json.dumps(manifest))
    config = {"models": {"face": str(face)}, "streams": [{"name": "a", "source": "synth://?size=320x240&fps=5"}]}
    with DaemonProcess(tmp_path, config) as d:
        with d.client(timeout=60) as client:
            deadline = time.monotonic() + 60
            while (before := client.status())["streams"][0]["state"] != "streaming":
                assert time.monotonic() < deadline, before
                time.sleep(0.2)
            pids = {s["stream"]: s["model"]["engine_pid"] for s in before["streams"]}
            d.write_config({"models": {"face": str(face), "bad": str(bad)},
                            "streams": [{**config["streams"][0], "model": "face"},
                                        {"name": "good", "source": "synth://?size=320x240&fps=5", "model": "face"},
                                        {"name": "doomed", "source": "synth://?size=320x240&fps=5", "model": "bad"}]})
            try:
                client.reload(timeout=120)
                raise AssertionError("the reload passed")
            except ClientError as exc:
                assert "GFL" in str(exc) or "gfl" in str(exc), exc
            status = client.status()
            assert [s["stream"] for s in status["streams"]] == ["a"], status["streams"]
            assert {s["stream"]: s["model"]["engine_pid"] for s in status["streams"]} == pids
            assert set(status["models"]) == {"face"} and status["last_reload"]["ok"] is False
            assert status["watchdog_stale"] == []
