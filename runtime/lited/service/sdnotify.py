"""Tell systemd how the daemon is doing (sd_notify) and keep its watchdog fed.

`Notifier` wraps `systemd.daemon.notify`. Every method is a silent no-op
when there is no NOTIFY_SOCKET (run by hand, under pytest, in a container
without systemd) or when systemd-python is missing, so callers never branch
on "are we under systemd".

`Watchdog` pings WATCHDOG=1 only while every registered loop has beaten
recently. A thread that pings unconditionally would keep a daemon whose
inference loop is wedged alive for ever; tying the ping to the loops' own
beats lets systemd (WatchdogSec=, Restart=on-failure) restart us instead.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable, Dict, List, Optional

try:
    from systemd import daemon as _daemon
except ImportError:  # pragma: no cover - systemd-python is absent off Linux
    _daemon = None

log = logging.getLogger(__name__)


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """sd_notify messages for a Type=notify (or notify-reload) service."""

    def notify(self, *assignments: str) -> bool:
        """Send VAR=value lines as one datagram; False when nobody listens.

        A failed send is logged, never raised: losing a STATUS= line must not
        take the daemon down. (A lost READY=1 or WATCHDOG=1 is visible to
        systemd anyway: it times out and restarts us.)
        """
        if _daemon is None or not os.environ.get("NOTIFY_SOCKET"):
            return False
        try:
            return bool(_daemon.notify("\n".join(assignments)))
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)
            return False

    def ready(self, status: Optional[str] = None) -> bool:
        """Start-up (or a reload) is complete: systemd now runs dependants."""
        return self.notify("READY=1", *_status_line(status))

    def status(self, text: str) -> bool:
        """One line shown by `systemctl status` (keep it short, no newlines)."""
        return self.notify(*_status_line(text))

    def watchdog(self) -> bool:
        """Feed systemd's watchdog; normally only `Watchdog` calls this."""
        return self.notify("WATCHDOG=1")

    def reloading(self, status: Optional[str] = None) -> bool:
        """A reload started; send `ready()` when it is done.

        MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) tell this
        reload from an older one; older systemd ignores the extra field.
        """
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={_monotonic_usec()}", *_status_line(status))

    def stopping(self, status: Optional[str] = None) -> bool:
        """Shutdown started: systemd stops expecting watchdog pings."""
        return self.notify("STOPPING=1", *_status_line(status))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for `seconds` more before TimeoutStartSec/StopSec fire (slow model loads)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    @staticmethod
    def watchdog_interval() -> Optional[float]:
        """WatchdogSec= in seconds, or None when systemd expects no pings from us.

        Same rule as sd_watchdog_enabled(3): WATCHDOG_USEC must be a positive
        integer and, when WATCHDOG_PID is set, it must be our pid (a child that
        inherited the variables must not ping on its parent's behalf).
        """
        try:
            usec = int(os.environ.get("WATCHDOG_USEC", ""))
        except ValueError:
            return None
        if usec <= 0:
            return None
        pid = os.environ.get("WATCHDOG_PID")
        if pid is not None:
            try:
                if int(pid) != os.getpid():
                    return None
            except ValueError:
                return None
        return usec / 1_000_000


def _status_line(text: Optional[str]) -> List[str]:
    if text is None:
        return []
    return ["STATUS=" + " ".join(text.split())]  # a newline would start a new assignment


class Watchdog:
    """Pings WATCHDOG=1 every interval/2 while all registered loops are fresh.

    Each long-running loop registers a name and calls `beat(name)` once per
    iteration. A loop must beat even when it has nothing to do: the inference
    loop waits for a frame with a timeout (shorter than the interval) and beats
    after every wait, so a camera that is down or a quiet stream never looks
    like a hang. Only a loop that stops coming round (a deadlock, a driver
    call that never returns) goes stale; then the pings stop, and systemd
    kills and restarts the service one WatchdogSec later.
    """

    def __init__(self, notifier: Notifier, interval: Optional[float] = None,
                 stale_after: Optional[float] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._notifier = notifier
        self.interval = interval if interval is not None else notifier.watchdog_interval()
        self.stale_after = stale_after if stale_after is not None else self.interval
        self._clock = clock
        self._beats: Dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._reported: frozenset = frozenset()

    @property
    def enabled(self) -> bool:
        """False when systemd set no WatchdogSec= (beats are then free no-ops)."""
        return self.interval is not None

    def register(self, name: str) -> None:
        """Track loop `name` from now on; register before start() so a loop that
        dies before its first beat is still noticed."""
        self.beat(name)

    def unregister(self, name: str) -> None:
        """The loop ended on purpose (stream removed on reload): stop tracking it."""
        with self._lock:
            self._beats.pop(name, None)

    def beat(self, name: str, grace: float = 0.0) -> None:
        """Loop `name` came round once more. `grace`: it is about to do
        something that may legitimately take up to that many seconds (build
        a model, a reload): it goes stale only `grace` s later than usual, so
        a slow step is not killed, but a wedged one still is."""
        now = self._clock()
        with self._lock:
            self._beats[name] = now + grace

    def stale(self) -> List[str]:
        """Names of loops whose last beat (plus its grace) is older than `stale_after`, sorted."""
        if self.stale_after is None:
            return []
        limit = self._clock() - self.stale_after
        with self._lock:
            return sorted(name for name, at in self._beats.items() if at < limit)

    def start(self) -> None:
        """Start the pinging thread (nothing to do when the watchdog is off)."""
        if not self.enabled or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop pinging (call after `Notifier.stopping()`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        assert self.interval is not None
        period = self.interval / 2
        while True:
            stale = self.stale()
            if stale:
                self._report(stale)
            else:
                self._reported = frozenset()
                self._notifier.watchdog()
            if self._stop.wait(period):
                return

    def _report(self, stale: List[str]) -> None:
        """Say once per stall which loops stopped, so the journal explains the kill."""
        if frozenset(stale) == self._reported:
            return
        self._reported = frozenset(stale)
        names = ", ".join(stale)
        log.error("watchdog: no beat from %s for over %.1f s; letting systemd restart us",
                  names, self.stale_after, extra={"event": "watchdog_stale"})
        self._notifier.status(f"stalled: {names}")
