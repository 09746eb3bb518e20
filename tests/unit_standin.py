"""Stand-in for `lited serve`, run as the ExecStart of the real units in the
container tests until the daemon exists.

It does, with the real modules, what the daemon has to manage under the
hardened unit: log to journald with fields (lited.logs), load and run a
Paddle Lite model (under MemoryDenyWriteExecute= and the syscall filter),
write to its StateDirectory, create a segment in /dev/shm as the frame ring
will, and speak sd_notify (READY, STATUS, RELOADING on SIGHUP, STOPPING on
SIGTERM) while a lited.sdnotify.Watchdog feeds systemd's watchdog.

Test-only fault: SIGUSR1 makes the "inference" loop stop beating, as a
wedged driver call would, so systemd's watchdog must kill and restart us.

    unit_standin.py MODEL.nb
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import numpy as np

from lited.engines import open_engine
from lited.logs import setup_logging
from lited.sdnotify import Notifier, Watchdog

log = logging.getLogger("lited.standin")


def main(model: str) -> int:
    setup_logging("INFO")
    notifier = Notifier()
    notifier.status("loading model")
    engine = open_engine("paddle_lite", model)
    card = json.loads((Path(model).parent / "model_card.json").read_text())
    engine.set_input(0, np.zeros(card["input"]["shape"], np.float32))
    outputs = engine.run()
    log.info("model ran, %d outputs", len(outputs), extra={"bundle": Path(model).parent.name, "event": "loaded"})

    state_dir = Path(os.environ["STATE_DIRECTORY"].split(":")[-1])
    (state_dir / "standin.state").write_text("ok\n")
    ring = Path("/dev/shm") / f"lited-standin-{state_dir.name}"  # one per unit: "lited", "cam1"
    ring.write_bytes(bytes(4096))

    events = {name: threading.Event() for name in ("hup", "term", "wedge")}
    signal.signal(signal.SIGHUP, lambda *_: events["hup"].set())
    signal.signal(signal.SIGTERM, lambda *_: events["term"].set())
    signal.signal(signal.SIGUSR1, lambda *_: events["wedge"].set())

    watchdog = Watchdog(notifier)
    watchdog.register("inference")
    watchdog.start()
    notifier.ready("serving 1 stream")
    log.info("ready", extra={"stream": "cam0", "bundle": Path(model).parent.name, "event": "ready"})

    while not events["term"].wait(0.2):  # an idle loop waits with a timeout and still beats
        if not events["wedge"].is_set():
            watchdog.beat("inference")
        if events["hup"].is_set():
            events["hup"].clear()
            notifier.reloading("reloading")
            log.info("reloaded", extra={"event": "reload"})
            notifier.ready("serving 1 stream (reloaded)")

    notifier.stopping("stopping")
    watchdog.stop()
    ring.unlink()
    log.info("stopped", extra={"event": "stopped"})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
