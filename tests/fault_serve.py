"""`lited serve` with a test-only fault installed through a hook the
production code declares, so that the watchdog has something to catch:

    python fault_serve.py N serve --config FILE         after N frames every stream's infer thread
                                                       blocks for ever (ModelRunner.fault_hook), as a
                                                       wedged driver call would
    python fault_serve.py request:METHOD serve ...      a request worker blocks for ever once it takes
                                                       a METHOD request (Requests.fault_hook)
    python fault_serve.py main:SECONDS serve ...        the main loop blocks for ever SECONDS after it
                                                       starts (Daemon.fault_hook)
    python fault_serve.py reload-dies-once:FILE serve   the daemon SIGKILLs itself as its first config
                                                       reload begins, unless FILE exists (made first):
                                                       killed mid-reload once, as by the OOM killer
"""
import itertools
import os
import signal
import sys
import threading
import time

from lited.cli import main

fault = sys.argv[1]
if fault.startswith("request:"):
    from lited.service.requests import Requests

    method = fault.split(":", 1)[1]

    def hang_on_method(_worker: str, taken: str) -> None:
        if taken == method:
            threading.Event().wait()

    Requests.fault_hook = hang_on_method
elif fault.startswith("main:"):
    from lited.service.daemon import Daemon

    wedge_at = time.monotonic() + float(fault.split(":", 1)[1])

    def hang_main_later() -> None:
        if time.monotonic() >= wedge_at:
            threading.Event().wait()

    Daemon.fault_hook = hang_main_later
elif fault.startswith("reload-dies-once:"):
    from lited.service.daemon import Daemon

    marker = fault.split(":", 1)[1]
    reload_config = Daemon.reload_config

    def dies_once(self, *args, **kwargs):
        if not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return reload_config(self, *args, **kwargs)

    Daemon.reload_config = dies_once
else:
    from lited.stream.runner import ModelRunner

    limit = int(fault)
    frames = itertools.count(1)

    def hang_after_limit(_runner: ModelRunner) -> None:
        if next(frames) > limit:
            threading.Event().wait()

    ModelRunner.fault_hook = hang_after_limit
sys.exit(main(sys.argv[2:]))
