"""Run `lited serve` as a real subprocess for tests, with its own runtime dir."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lited.client import Client, ClientError, DaemonUnreachable


class DaemonProcess:
    def __init__(self, tmp: Path, config: dict, args: tuple = (), env: dict | None = None,
                 wrapper: tuple = (), python: tuple = ("-m", "lited.cli")) -> None:
        """`wrapper`: argv run in front of the interpreter (unshare, setpriv);
        `python`: what the interpreter runs (a test script that installs a fault hook)."""
        self.tmp = Path(tmp)
        self.wrapper = tuple(wrapper)
        self.python = tuple(python)
        self.run_dir = self.tmp / "run"
        self.config = {"runtime_dir": str(self.run_dir), **config}
        self.config_path = self.tmp / "lited.json"
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log_path = self.tmp / "daemon.log"

    @property
    def pub(self) -> str:
        return f"ipc://{self.run_dir}/pub.sock"

    @property
    def req(self) -> str:
        return f"ipc://{self.run_dir}/req.sock"

    def write_config(self, config: dict | None = None) -> None:
        if config is not None:
            self.config = {"runtime_dir": str(self.run_dir), **config}
        self.config_path.write_text(json.dumps(self.config))

    def start(self, timeout: float = 60) -> "DaemonProcess":
        self.write_config()
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*self.wrapper, sys.executable, *self.python, "serve", "--config",
                                      str(self.config_path), *self.args],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        with Client(self.req, timeout=1) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"lited serve exited {self.proc.returncode}:\n{self.output()}")
                try:
                    client.ping()
                    return self
                except DaemonUnreachable:  # not bound yet: said at once, so wait a little
                    time.sleep(0.05)
                except (TimeoutError, ClientError):
                    continue
        self.stop()  # never leave a daemon behind a failed start
        raise TimeoutError(f"lited serve not answering after {timeout} s:\n{self.output()}")

    def wait_ready(self, timeout: float = 120) -> "DaemonProcess":
        """Until status says start-up finished (every stream's model warm):
        a ping is answered earlier, while models warm up."""
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while not client.status()["ready"]:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise TimeoutError(f"lited serve not ready after {timeout} s:\n{self.output()}")
                time.sleep(0.1)
        return self

    def client(self, timeout: float = 10) -> Client:
        return Client(self.req, timeout=timeout)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def stop(self, timeout: float = 10) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def __enter__(self) -> "DaemonProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
