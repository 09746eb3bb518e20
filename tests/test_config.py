"""The daemon config's checks and the one name rule, through the real commands.

A value that cannot work (negative slots, a negative timeout, no request
workers) is refused at `lited serve` with its field path, never silently
replaced by a default; and a bundle name is judged by the same rule in the
daemon, the builder and the installer.
"""
from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import DEMO_BUNDLE, ROOT
from lited.bundle import validate_manifest
from lited.config import ConfigError, parse_config
from lited.validate import name_problem

BASE = {"models": {"ocr": str(DEMO_BUNDLE)}, "streams": [{"name": "cam", "source": "synth://?fps=5"}]}


def with_changes(**changes) -> dict:
    raw = json.loads(json.dumps(BASE))
    for path, value in changes.items():
        target, keys = raw, path.split("__")
        for key in keys[:-1]:
            target = target[int(key)] if isinstance(target, list) else target.setdefault(key, {})
        target[keys[-1]] = value
    return raw


@pytest.mark.parametrize("changes, message", [
    ({"streams__0__slots": -1}, "streams[0].slots: expected an integer from 0 to 64, got -1"),
    ({"streams__0__slots": 65}, "streams[0].slots: expected an integer from 0 to 64, got 65"),
    ({"streams__0__slots": 4.5}, "streams[0].slots: expected an integer from 0 to 64, got 4.5"),
    ({"streams__0__keep_results": 17}, "streams[0].keep_results: expected an integer from 0 to 16, got 17"),
    ({"streams__0__policy": "fastest"}, "streams[0].policy: unknown \"fastest\", expected one of latest, queue"),
    ({"streams__0__stall_timeout": -1}, "streams[0].stall_timeout: expected a number above 0"),
    ({"streams__0__stall_timeout": 0}, "streams[0].stall_timeout: expected a number above 0"),
    ({"request_workers": 0}, "request_workers: expected an integer from 1 to 64, got 0"),
    ({"limits__max_request_bytes": 0}, "limits.max_request_bytes: expected an integer from 1024"),
    ({"limits__max_request_bytes": -1}, "limits.max_request_bytes: expected an integer from 1024"),
    ({"limits__pub_hwm": -5}, "limits.pub_hwm: expected an integer from 1"),
    ({"limits__pub_hwm": 0}, "limits.pub_hwm: expected an integer from 1"),
    ({"status_interval": 0}, "status_interval: expected a number above 0"),
    ({"insecure_tcp": "yes"}, "insecure_tcp: expected true/false, got \"yes\""),
    ({"limits__max_request_byte": 5}, "limits.max_request_byte: unknown field"),
    ({"streams__0__name": "../x"}, "streams[0].name: '../x' may hold only ASCII letters"),
    ({"streams__0__name": "_daemon"}, "streams[0].name: '_daemon' is reserved for the daemon's own events"),
    ({"streams__0__model": 3}, "streams[0].model: expected a name (text), got 3"),  # it was told the name rule
    ({"endpoints__pub": []}, "endpoints.pub: expected an endpoint or a list of them"),
    # YAML 1.1 reads 1.6e7 as text: the message says so, it only showed the quotes
    ({"limits__max_request_bytes": "1.6e7"}, "limits.max_request_bytes: expected an integer from 1024 to 1073741824, "
                                              "got \"1.6e7\" (text, not a number: unquote it; YAML reads 1e7 as text"),
    ({"http": {"listen": ["127.0.0.1:24401", "127.0.0.1:24401"]}}, "http.listen: 127.0.0.1:24401 overlaps 127.0.0.1:24401"),
    ({"http": {"listen": ["localhost:24401", "127.0.0.1:24401"]}}, "http.listen: 127.0.0.1:24401 overlaps localhost:24401"),
    ({"http": {"listen": ["0.0.0.0:24401", "127.0.0.1:24401"], "token": "x" * 20}},
     "http.listen: 127.0.0.1:24401 overlaps 0.0.0.0:24401"),
])
def test_values_that_cannot_work_are_refused_with_their_field(changes, message):
    with pytest.raises(ConfigError) as info:
        parse_config(with_changes(**changes))
    assert message in str(info.value)


def test_http_and_uplink_fields_are_checked_with_the_rest_at_once():
    """Their field checks are the schema's, so a bad stream, a bad http field
    and a bad uplink field are all said in one go, as are the checks that span
    fields (a missing token beside a bad live_fps)."""
    raw = with_changes(streams__0__slots=-1)
    raw["http"] = {"listen": ["0.0.0.0:0", "nowhere"], "live_fps": 0, "metrics_public": "yes"}
    raw["uplink"] = {"broker": "mqtt://127.0.0.1", "device": "gate", "window": 0, "outbox": {"max_bytes": 10},
                     "streams": {"cam": {"attach": "video", "labels": "face"}}}
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    said = info.value.problems
    for message in ("streams[0].slots: expected an integer from 0 to 64, got -1",
                    "http.listen: \"nowhere\" is not HOST:PORT", "http.live_fps: expected a number above 0",
                    "http.metrics_public: expected true/false", "uplink.window: expected an integer from 1 to 1000",
                    "uplink.outbox.max_bytes: expected an integer from 65536",
                    "uplink.streams.cam.attach: unknown \"video\", expected one of none, crops, frame",
                    "uplink.streams.cam.labels: expected a list"):
        assert any(message in p for p in said), (message, said)
    raw = with_changes()
    raw["http"] = {"listen": "0.0.0.0:0", "live_fps": 0}
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert [p.split(":")[0] for p in info.value.problems] == ["http.live_fps"]  # the field first; then, fixed:
    raw["http"]["live_fps"] = 5
    with pytest.raises(ConfigError, match="http.token: needed: 0.0.0.0:0 is not a loopback address"):
        parse_config(raw)


def test_the_schema_knows_http_and_uplink_field_by_field():
    from lited.config import json_schema

    defs = json_schema()["$defs"]
    assert defs["HttpSection"]["properties"]["live_fps"]["exclusiveMinimum"] == 0
    assert defs["HttpSection"]["additionalProperties"] is False
    assert defs["UplinkSection"]["required"] == ["broker", "device"]
    assert defs["UplinkRuleSection"]["properties"]["attach"]["enum"] == ["crops", "frame", "none"]
    config = parse_config({**with_changes(), "http": {}, "uplink": {"broker": "mqtt://127.0.0.1", "device": "gate"}})
    assert (config.http.max_body_bytes, config.http.body_budget_bytes, config.http.live_fps) == (16 << 20, 48 << 20, 10.0)
    assert (config.uplink.username, config.uplink.window, config.uplink.rules) == ("gate", 64, {})


def test_zero_and_false_are_kept_where_they_are_valid():
    config = parse_config(with_changes(insecure_tcp=False, streams__0__slots=0, streams__0__keep_results=0))
    assert config.insecure_tcp is False and config.streams[0].slots == 0 and config.streams[0].keep_results == 0
    config = parse_config(BASE)
    stream = config.streams[0]
    assert (stream.slots, stream.keep_results, stream.policy, stream.stall_timeout, config.request_workers) \
        == (2, 0, None, 5.0, 1)  # policy None: the source decides
    assert parse_config(with_changes(streams__0__policy="queue")).streams[0].policy == "queue"


def test_null_is_absent_where_the_schema_allows_it_and_refused_elsewhere():
    """docs/config.md said a default is used only when a field is absent; null took the default
    for some fields and was refused for others (the black-box config audit)."""
    nulls = parse_config(with_changes(runtime_dir=None, group=None, http=None, streams__0__policy=None))
    assert dataclasses.replace(nulls, raw=BASE) == parse_config(BASE)  # `raw`: the file as read
    with pytest.raises(ConfigError, match=r"streams\[0\]\.keep_results: expected an integer from 0 to 16, got null"):
        parse_config(with_changes(streams__0__keep_results=None))


def test_serve_refuses_a_bad_config_in_one_line_exit_2(tmp_path):
    conf = tmp_path / "lited.conf"
    conf.write_text(json.dumps(with_changes(streams__0__slots=-1, request_workers=0)))
    proc = subprocess.run([sys.executable, "-m", "lited.cli", "serve", "--config", str(conf)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "streams[0].slots: expected an integer from 0 to 64, got -1" in lines[0]
    assert "request_workers: expected an integer from 1 to 64, got 0" in lines[0]


def test_config_check_says_what_serve_would_of_an_engine_the_bundle_does_not_list(tmp_path):
    """The demo bundle lists OpenVINO and onnxruntime for its ONNX, Paddle Lite for
    its .nb: Paddle Inference it does not list. Both commands refuse, naming the field."""
    conf = tmp_path / "lited.conf"
    conf.write_text(json.dumps({**BASE, "models": {"ocr": {"bundle": str(DEMO_BUNDLE), "engine": "paddle_inference"}}}))
    for command in ("config check", "serve"):
        proc = subprocess.run([sys.executable, "-m", "lited.cli", *command.split(), "--config", str(conf)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and proc.stdout == "", (command, proc.stdout, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "models.ocr.engine: bundle " in proc.stderr \
            and "no file for paddle_inference" in proc.stderr, (command, proc.stderr)


WITHOUT_TORNADO = ("import sys; sys.modules['tornado'] = None\n"  # a runtime installed without the http extra
                   "from lited.cli import main; sys.exit(main(sys.argv[1:]))")


def test_config_check_says_what_serve_would_of_an_optional_part_not_installed(tmp_path):
    """`config check` said ok to an `http:` section on a runtime without tornado; `serve` then
    stopped at it, and systemd restarted it in a loop."""
    conf = tmp_path / "lited.conf"
    conf.write_text(json.dumps({**BASE, "http": {"listen": "127.0.0.1:0"}}))
    for command in ("config check", "serve"):
        proc = subprocess.run([sys.executable, "-c", WITHOUT_TORNADO, *command.split(), "--config", str(conf)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and proc.stdout == "", (command, proc.stdout, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "http: needs the 'http' extra (pip install 'lited[http]'" \
            in proc.stderr and "No module named 'tornado" in proc.stderr, (command, proc.stderr)


NAMES = ["a", "A.b-c_1", "_x", "x" * 64, "9", ".a", "-a", "a/b", "x" * 65, "current", "previous", "a b", "é", ""]


def _installer_accepts(tmp_path: Path, name: str) -> bool:
    """tools/sdk_unpack.py check (what install_sdk.sh runs first) on a zip whose manifest has `name`."""
    manifest = json.loads((DEMO_BUNDLE / "manifest.json").read_text())
    manifest["name"] = name
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as zf:
        zf.writestr("b/manifest.json", json.dumps(manifest))
    path = tmp_path / "b.zip"
    path.write_bytes(data.getvalue())
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "sdk_unpack.py"), "check", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode == 0


def test_one_name_rule_for_daemon_config_manifest_and_installer(tmp_path):
    manifest = json.loads((DEMO_BUNDLE / "manifest.json").read_text())
    for name in NAMES:
        rule = name_problem(name) is None
        in_manifest = not any(p.startswith("name:") for p in validate_manifest({**manifest, "name": name},
                                                                               DEMO_BUNDLE))
        try:
            parse_config({"models": {name: str(DEMO_BUNDLE)}})
            in_config = True
        except ConfigError:
            in_config = False
        assert (in_manifest, in_config, _installer_accepts(tmp_path, name)) == (rule, rule, rule), name
    assert [n for n in NAMES if name_problem(n) is None] == ["a", "A.b-c_1", "_x", "x" * 64, "9"]


def test_the_documented_example_is_a_config_the_daemon_takes():
    """docs/config.md's example, as written (YAML with comments), passes the daemon's checks."""
    import re

    from lited.config import read_config_file

    doc = (ROOT / "docs" / "config.md").read_text()
    example = re.search(r"## Example\n\n```yaml\n(.*?)```", doc, re.S).group(1)
    path = ROOT / "build" / "example.conf"
    path.parent.mkdir(exist_ok=True)
    path.write_text(example)
    try:
        config = parse_config(read_config_file(path), path)
    finally:
        path.unlink()
    assert [(s.name, s.model, s.slots) for s in config.streams] == [("gate", "det", 2), ("belt", "ocr", 2)]
    assert config.group == "lited" and config.max_request_bytes == 16777216
    assert (config.model_settings["ocr"].engine, config.model_settings["ocr"].threads) == ("openvino", 2)


def test_every_path_of_the_config_is_relative_to_its_folder(tmp_path):
    """A relative runtime_dir went to the daemon's working directory (the bundles, to the config's folder):
    `lited ctl --config` then looked elsewhere than the daemon bound."""
    from lited.config import client_endpoints

    here = tmp_path / "etc"
    here.mkdir()
    raw = {**BASE, "runtime_dir": "run", "state_dir": "state",
           "curve": {"server_secret": "keys/server.key_secret", "clients_dir": "keys/clients"}}
    (here / "lited.json").write_text(json.dumps(raw))
    config = parse_config(raw, here / "lited.json")
    assert (config.runtime_dir, config.state_dir) == (here / "run", here / "state")
    assert config.curve == {"server_secret": str(here / "keys/server.key_secret"),
                            "clients_dir": str(here / "keys/clients")}
    assert config.pub == [f"ipc://{here}/run/pub.sock"]
    assert client_endpoints(here / "lited.json") == (config.pub, config.req)
    # a relative ipc:// endpoint and the uplink's outbox (a recheck found them in the working directory)
    raw = {**BASE, "endpoints": {"req": "ipc://s/req.sock", "pub": ["ipc://s/pub.sock", "tcp://127.0.0.1:5555"]},
           "insecure_tcp": True, "uplink": {"broker": "mqtt://127.0.0.1:1883", "device": "d1", "outbox": {"dir": "obox"}}}
    (here / "lited.json").write_text(json.dumps(raw))
    config = parse_config(raw, here / "lited.json")
    assert (config.pub, config.req) == ([f"ipc://{here}/s/pub.sock", "tcp://127.0.0.1:5555"], [f"ipc://{here}/s/req.sock"])
    assert config.uplink.outbox_dir == here / "obox"
    assert client_endpoints(here / "lited.json") == (config.pub, config.req)


def test_ctl_reload_says_restarted_for_a_stream_in_started_and_stopped():
    from lited.ctl import human_reload

    line = human_reload({"reloaded": ["det"], "started": ["a", "new"], "stopped": ["a", "gone"], "took_ms": 1200},
                        "ipc://x")
    assert line == "reloaded det in 1.2 s; restarted a; started new; stopped gone"


def test_a_tab_in_a_yaml_config_is_named(tmp_path):
    """The technician's commonest YAML slip: the message said "found character that cannot start any
    token" (the tab itself collapsed away with the whitespace)."""
    from lited.config import read_config_file

    path = tmp_path / "lited.yaml"
    path.write_text("models:\n\tface: /srv/bundles/face\n")
    with pytest.raises(ConfigError) as caught:
        read_config_file(path)
    assert str(caught.value).endswith("line 2, column 1: not valid YAML (while scanning for the next token found "
                                      "character that cannot start any token: a tab (YAML indents with spaces))")
