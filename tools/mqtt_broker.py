#!/usr/bin/env python3
"""A Mosquitto broker on loopback for tests, `make demo-cloud` and the benchmark.

    broker = Broker(workdir, devices=["dev1", "dev2"])   # PKI, passwords, the ACL, mosquitto.conf
    broker.start(); broker.stop(kill=True); broker.start()   # same ports, same files

Everything as docs/uplink.md describes a deployment: two TLS listeners on
127.0.0.1 with a throwaway CA (openssl CLI, EC P-256),
- devices: user name + password (mosquitto_passwd), `use_username_as_clientid`
  so no device can take over another's session by choosing its client id;
- servers (`lited cloud`, `lited remote`): client certificates, the
  certificate's CN is the user name (`use_identity_as_username`);
and the ACL **read from docs/uplink.md** (its ```acl block), so the tested ACL
is the documented one. Run as root, mosquitto would switch to user
`mosquitto` and could not read a private temp dir: the config keeps the
caller's user.

    python tools/mqtt_broker.py DIR [--devices dev1,dev2]   # set up and run in the foreground
"""
from __future__ import annotations

import argparse
import os
import pwd
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from lited.config import SERVER_IDENTITY  # the certificate CN the documented ACL gives the servers

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "uplink.md"


def documented_acl(doc: Path = DOC) -> str:
    """The ```acl block of docs/uplink.md."""
    match = re.search(r"^```acl\n(.*?)^```", doc.read_text(encoding="utf-8"), re.S | re.M)
    if not match:
        raise ValueError(f"{doc}: no ```acl block")
    return match.group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(*cmd: str, cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path, clients: tuple) -> None:
    """CA, a server certificate for 127.0.0.1/localhost, one client certificate per name."""
    d.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _run("openssl", "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "30",
         "-subj", "/CN=lited-test-ca", cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _run("openssl", "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=d)
    _run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "server.crt", "-days", "30", "-extfile", "server.ext", cwd=d)
    for name in clients:
        _run("openssl", "req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        _run("openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "30", cwd=d)


class Broker:
    def __init__(self, workdir: Path, devices: tuple = ("dev1", "dev2"), persistence: bool = True) -> None:
        self.dir = Path(workdir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.devices = tuple(devices)
        self.port = free_port()          # devices: TLS + password
        self.cert_port = free_port()     # servers: TLS + client certificate
        self.proc: Optional[subprocess.Popen] = None
        self.pki = self.dir / "pki"
        make_pki(self.pki, (SERVER_IDENTITY,))
        self.ca = str(self.pki / "ca.crt")
        self.passwords = {}
        pw = self.dir / "passwd"
        pw.write_text("")
        for device in self.devices:
            self.passwords[device] = f"pw-{device}-{os.urandom(4).hex()}"
            (self.dir / f"{device}.password").write_text(self.passwords[device] + "\n")
            _run("mosquitto_passwd", "-b", str(pw), device, self.passwords[device], cwd=self.dir)
        (self.dir / "acl").write_text(documented_acl())
        p = self.pki
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(f"""\
per_listener_settings false
user {pwd.getpwuid(os.geteuid()).pw_name}
allow_anonymous false
password_file {self.dir}/passwd
acl_file {self.dir}/acl
persistence {'true' if persistence else 'false'}
persistence_location {self.dir}/
max_queued_messages 100000
log_dest file {self.dir}/mosquitto.log
log_type error
log_type warning
log_type notice
connection_messages true

listener {self.port} 127.0.0.1
cafile {p}/ca.crt
certfile {p}/server.crt
keyfile {p}/server.key
use_username_as_clientid true

listener {self.cert_port} 127.0.0.1
cafile {p}/ca.crt
certfile {p}/server.crt
keyfile {p}/server.key
require_certificate true
use_identity_as_username true
""")

    # -- what clients need
    @property
    def device_url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"

    @property
    def server_url(self) -> str:
        return f"mqtts://127.0.0.1:{self.cert_port}"

    def password_file(self, device: str) -> str:
        return str(self.dir / f"{device}.password")

    def uplink_config(self, device: str, **extra) -> dict:
        """The `uplink` config section of a device on this broker."""
        return {"broker": self.device_url, "device": device, "ca": self.ca,
                "password_file": self.password_file(device), **extra}

    def server_args(self) -> list:
        """`lited cloud` / `lited remote` arguments for this broker."""
        return ["--broker", self.server_url, "--ca", self.ca, "--cert", str(self.pki / f"{SERVER_IDENTITY}.crt"),
                "--key", str(self.pki / f"{SERVER_IDENTITY}.key")]

    def server_settings(self):
        from lited.mqtt_link import BrokerSettings

        return BrokerSettings(self.server_url, self.ca, str(self.pki / f"{SERVER_IDENTITY}.crt"),
                              str(self.pki / f"{SERVER_IDENTITY}.key"))

    def device_settings(self, device: str, password: Optional[str] = None):
        from lited.mqtt_link import BrokerSettings

        if password is not None:
            path = self.dir / f"{device}.wrong-password"
            path.write_text(password + "\n")
            return BrokerSettings(self.device_url, self.ca, username=device, password_file=str(path))
        return BrokerSettings(self.device_url, self.ca, username=device, password_file=self.password_file(device))

    # -- lifecycle
    def start(self, timeout: float = 10.0) -> float:
        """Start mosquitto and wait until it completes a TLS handshake; seconds taken."""
        if self.proc is not None and self.proc.poll() is None:  # a second one would be left running
            raise RuntimeError(f"mosquitto is running already (pid {self.proc.pid}): stop() it first")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        ctx = ssl.create_default_context(cafile=self.ca)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited {self.proc.returncode}: "
                                   f"{self.proc.stderr.read().decode()}{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    with ctx.wrap_socket(s, server_hostname="127.0.0.1"):
                        return time.monotonic() - t0
            except (OSError, ssl.SSLError):
                if time.monotonic() - t0 > timeout:
                    self.stop(kill=True)
                    raise TimeoutError("mosquitto did not start" + self.log_tail())
                time.sleep(0.01)

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (mosquitto saves its sessions and queues) or SIGKILL (it saves nothing)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n" + "".join((self.dir / "mosquitto.log").read_text().splitlines(True)[-n:])
        except OSError:
            return ""

    def __enter__(self) -> "Broker":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--devices", default="dev1,dev2")
    args = ap.parse_args()
    broker = Broker(args.dir, tuple(args.devices.split(",")))
    broker.start()
    print(f"devices: {broker.device_url} (passwords in {broker.dir}/<device>.password); "
          f"servers: {broker.server_url} {' '.join(broker.server_args())}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        broker.proc.wait()
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
