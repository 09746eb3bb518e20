"""`lited serve` with a test-only fault installed (the hook ModelRunner declares):
after N frames every stream's infer thread blocks for ever, as a wedged
driver call would, so that systemd's watchdog has to restart the service.

    python fault_serve.py N serve --config FILE
"""
import itertools
import sys
import threading

from lited.cli import main
from lited.stream.runner import ModelRunner

limit = int(sys.argv[1])
frames = itertools.count(1)


def hang_after_limit(_runner: ModelRunner) -> None:
    if next(frames) > limit:
        threading.Event().wait()


ModelRunner.fault_hook = hang_after_limit
sys.exit(main(sys.argv[2:]))
