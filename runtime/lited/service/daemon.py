"""`lited serve`: lifecycle, signals, streams, reload, status.

Rules it keeps:
- a reload validates and warms up every new model beside the old ones and
  swaps only when all are ready; on any failure the old ones keep serving,
  and every outcome is one reload record (log line, `reload` event,
  `last_reload` in status, the systemd status line);
- `lited ctl reload` and SIGHUP are one thing (the config file is read
  again), done under one lock; a bundle that would change what a model's
  results mean (its task or labels) is refused unless forced, so an app
  reading "face" results never gets a classifier's;
- READY=1 once models are warm and sources are opening; WATCHDOG=1 only while
  every loop is alive: the inference loops, the bus loop, the request
  workers and the main loop (a camera being down does not stop the beats; a
  wedged thread does); a step that may legitimately take long (a reload, a
  request building a model) beats with a grace as long as its bound;
- signal handlers are installed before anything answers: a SIGHUP during
  start-up is a reload once serving, a SIGTERM a clean stop;
- memory: requests share one byte budget, replies a client leaves unread
  are bounded, large freed buffers go back to the system (docs/RELIABILITY.md,
  "Memory budget").
- the streams' engine threads together fit the cores (`cores.share_threads`):
  each stream has an engine process of its own, and N streams of T threads
  on fewer than N x T cores would only take turns (and spin); when they leave
  cores over, each engine process gets cores of its own and the daemon's
  threads the rest (`cores.plan_cores`, config `pin_engines`).
"""
from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import resource
import signal
import threading
import time
from typing import Any, Callable, ClassVar, Optional, Sequence

from lited import __version__, protocol
from lited.bundle import Bundle, BundleError, load_bundle
from lited.config import Config, ConfigError, ModelSettings, StreamConfig, load_config, uplink_restart_fields
from lited.cores import CoreClaim, CorePlan, apply as apply_plan, cores_of_other_engines, plan_cores, share_threads
from lited.engine_process import child_pids
from lited.engines import EngineError
from lited.model import Model
from lited.protocol import ProtocolError
from lited.preflight import load_bundles, tcp_problems
from lited.service.bus import Bus, Curve
from lited.service.requests import Requests
from lited.service.sdnotify import Notifier, Watchdog
from lited.service.uplink import UPLINK_FRAMES_HELD, Uplink
from lited.sources import SourceError
from lited.sources.errors import redact
from lited.stream import Stream
from lited.stream.handoff import Frame
from lited.stream.ring import sweep_stale
from lited.stream.stats import COUNTERS
from lited.stream.stream import source_policy
from lited.errors import first_line
from lited.validate import quoted

log = logging.getLogger("lited.daemon")
LOAD_ERRORS = (BundleError, EngineError, SourceError, ValueError, OSError, TimeoutError)
READY_TIMEOUT = 120.0  # s a stream's new model may take to build and warm up (Stream.prepare_model)
MMAP_THRESHOLD = 1 << 20  # glibc: allocations this big are mmapped, so freeing them returns the memory
OPEN_FILES_CAP = 1 << 20  # the open-files limit taken when the hard one is unlimited (the kernel's nr_open default)
LOW_OPEN_FILES = 4096     # under this limit a flood of connections can end the daemon: said at start


def return_freed_memory() -> None:
    """Have glibc mmap every allocation of MMAP_THRESHOLD bytes or more and
    unmap it on free. By default the threshold adapts upwards (to 32 MB) as
    such blocks are freed, after which large request buffers come from the
    heap and stay in the daemon's RSS (measured: 350-430 MB kept after a
    flood of 7.7 MB arrays). No-op without glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, MMAP_THRESHOLD)  # M_MMAP_THRESHOLD; setting it also stops the adaptation


def raise_open_files_limit() -> int:
    """The soft limit of open files raised to the hard one (systemd gives a service 1024 and
    524288; RLIM_INFINITY counts as OPEN_FILES_CAP). At the soft limit libzmq aborts the
    process on an accept that fails (measured: 100 subscriber connections under `ulimit -n 128`,
    SIGABRT, nothing logged) and tornado's accept loop spins; each connection is then the
    kernel's memory to give, not a count of 1024. Returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = OPEN_FILES_CAP if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):  # over the kernel's nr_open: left as it was
            pass
    return soft


class ReloadRefused(ValueError):
    """A reload that would change what a model's results mean, not forced."""


def change_problem(name: str, old: Any, new: Any) -> Optional[str]:
    """Why swapping model `name` from bundle `old` to `new` needs --force, or None: another task,
    other labels, or a cascade stage gone or classifying into other labels (apps read a stage's
    classes on each detection as they read the first stage's)."""
    if old.task != new.task:
        what = f"task {old.task} -> {new.task}"
    elif list(old.labels) != list(new.labels):
        what = _labels_change(old.labels, new.labels)
    else:
        what = _stage_change(old.stages, new.stages)
        if what is None:
            return None
    same = (new.name, new.version) == (old.name, old.version)  # then which is which is their directories
    return (f"model {name}: {new.name} {new.version}{f' ({new.root})' if same else ''} would replace "
            f"{old.name} {old.version}{f' ({old.root})' if same else ''} with another {what}; "
            "apps reading its results would misread them: refused (a forced reload swaps anyway: lited ctl reload --force, the request's force)")


def _labels_change(old: list, new: list) -> str:
    gone, added = [x for x in old if x not in new], [x for x in new if x not in old]
    return "labels " + (", ".join(filter(None, (f"-{','.join(gone[:3])}" if gone else "",
                                                f"+{','.join(added[:3])}" if added else ""))) or "reordered")


def _stage_change(old: list, new: list) -> Optional[str]:
    from lited.decoders import DECODERS

    now = {stage.name: stage for stage in new}
    for stage in old:
        if stage.name not in now:
            return f"cascade: stage {stage.name} gone"
        classifies = "classes" in DECODERS.get(stage.decoder["type"]).ADDS
        if classifies and list(stage.labels) != list(now[stage.name].labels):
            return f"cascade: stage {stage.name} with {_labels_change(stage.labels, now[stage.name].labels)}"
    return None


class Daemon:
    """`lited serve`: the streams, the request core, the bus and the optional HTTP and uplink,
    started, reloaded and stopped together, with systemd told how it goes."""
    # Test hook: tests install a callable() that runs once per main-loop
    # iteration, to wedge the main loop. None in production.
    fault_hook: ClassVar[Optional[Callable[[], None]]] = None

    def __init__(self, config: Config, insecure_tcp: bool = False) -> None:
        self.config = config
        self.insecure_tcp = insecure_tcp or config.insecure_tcp
        self.notifier = Notifier()
        self.watchdog = Watchdog(self.notifier)
        self.started = time.monotonic()
        self.bundles: dict = {}            # model name -> Bundle
        self.generation: dict = {}         # model name -> int, bumped on reload (request workers rebuild)
        self.swapped_away: set = set()     # models serving another bundle than the config's (--bundle)
        self.spares: dict = {}             # model name -> (generation, Model) no stream runs, warmed at start
        #                                    or reload, for the first request worker that asks
        self.spares_warming: set = set()   # model names whose start-up spare is not kept yet
        self.spares_kept = threading.Condition()  # notified when start-up's spares are kept (or are not coming)
        self.streams: dict = {}            # stream name -> Stream
        self.stream_configs: dict = {}     # stream name -> the StreamConfig it was started from
        self.warming: dict = {}            # stream name -> StreamConfig whose model is warming up
        self.stream_threads: dict = {}     # stream name -> its engine's threads (cores.share_threads)
        self.cpus = tuple(sorted(os.sched_getaffinity(0)))  # every core we may use, before any plan pins us
        self.core_plan: Optional[CorePlan] = None
        self.core_claim = CoreClaim()  # where other lited processes read the cores our engines are on
        self.last_reload: dict = {}
        self.ready = False                 # True once start() finished: streams warm, `ready` published
        self.stop_event = threading.Event()
        self.reload_requested = threading.Event()
        self._reload_lock = threading.RLock()  # SIGHUP (main thread) and `reload` requests (a worker)
        self.requests = Requests(self, config.request_workers, config.max_request_bytes, config.max_inflight_bytes,
                                 config.engine_timeout, heartbeat=self.watchdog.beat)
        self.bus: Optional[Bus] = None
        self.http: Any = None  # service/http.HttpFront when the config has `http` (tornado is imported only then)
        self.uplink: Optional[Uplink] = None

    # -- start and stop
    def install_signal_handlers(self, early: Sequence[int] = ()) -> None:
        """Before anything answers: a signal during start-up must not kill us
        with our socket files left behind (SIGHUP's default action). `early`:
        the signals that came before (kept by the CLI), done now."""
        signal.signal(signal.SIGTERM, lambda *_: self.stop_event.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop_event.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())
        for signum in early:
            (self.reload_requested if signum == signal.SIGHUP else self.stop_event).set()

    def start(self) -> None:
        """Check what the config names (every problem at once, before a socket
        or a folder is made), bind (a second daemon on the same sockets fails
        here, before any engine starts), start; a SIGTERM meanwhile skips what
        is left."""
        cfg = self.config
        self.notifier.status("loading bundles")
        self.bundles.update(load_bundles(cfg))
        self.generation.update(dict.fromkeys(self.bundles, 0))
        problems = tcp_problems(cfg, self.insecure_tcp)
        if problems:  # said here as `config check` says it, naming the file and the field
            raise ConfigError(str(cfg.path or "<config>"), problems)
        curve = Curve(cfg.curve["server_secret"], cfg.curve["clients_dir"]) if cfg.curve else None
        self.bus = Bus(cfg.pub, cfg.req, self.requests.on_message, curve, self.insecure_tcp, cfg.pub_hwm,
                       cfg.max_request_bytes, heartbeat=lambda: self.watchdog.beat("bus"), max_clients=cfg.max_clients)
        self.requests.max_reply_bytes = self.bus.max_reply_bytes
        swept = sweep_stale()
        if swept:
            log.info("removed %d stale frame rings: %s", len(swept), ", ".join(swept), extra={"event": "sweep"})
        for name in ("bus", "main", *self.requests.loop_names):
            self.watchdog.register(name)
        # listed (state "starting") from the first status answered: a subscriber that checks
        # its streams as soon as `ping` answers must find them
        self.warming = {sc.name: sc for sc in cfg.streams}
        # an infer answered before its model's spare is kept waits for it: building one of its own
        # beside the spare left two engine processes of the one model running for good
        streamed = {sc.model for sc in cfg.streams}
        self.spares_warming = set(self.bundles) - streamed
        self.requests.start()
        if cfg.http is not None:  # before the bus loop: once `ping` answers, HTTP is served too
            self._start_http()
        # before the bus loop too: once `ping` answers, status shows the uplink (it was None for a moment)
        if cfg.uplink is not None:
            self.uplink = Uplink(cfg.uplink, self.requests.call, self._publish_answer, self._hold_frame,
                                 self._health)
            try:
                self.uplink.start()
            except OSError as exc:
                if not str(exc.filename or "").startswith(str(cfg.uplink.outbox_dir)):
                    raise
                raise ConfigError(str(cfg.path or "<config>"), [  # its outbox directory cannot be made or used
                    f"uplink.outbox.dir: {cfg.uplink.outbox_dir}: {exc.strerror or exc}"]) from None
        self.bus.start()
        # a `reload` request (a worker thread, once the bus answers) waits for the streams to start, as
        # a SIGHUP does: taken at once, it started each stream a second time beside the first
        with self._reload_lock:
            self.stream_threads = self._plan_threads(cfg.streams)
            try:
                spares, failed = self._warm_spares(self.bundles, streamed)
                self._keep_spares(spares)
            finally:
                with self.spares_kept:
                    self.spares_warming.clear()
                    self.spares_kept.notify_all()
            problems = [f"models.{n}: {first_line(e)}" for n, e in failed]
            for i, sc in enumerate(cfg.streams, 1):
                if self.stop_event.is_set():
                    return
                if any(p.startswith(f"models.{sc.model}: ") for p in problems):
                    continue  # said once
                self.watchdog.beat("main", READY_TIMEOUT)
                try:
                    self._start_stream(sc, f"{i}/{len(cfg.streams)}")
                except LOAD_ERRORS as exc:  # every model that does not run, named by its field (the streams
                    problems.append(f"models.{sc.model}: {first_line(exc)}")  # started meanwhile: stopped)
            if problems:
                raise ConfigError(str(cfg.path or "<config>"), problems)
        self.notifier.ready(self.status_line())
        self.watchdog.start()
        self.ready = True
        self._daemon_event("ready", f"{len(self.streams)} streams, {len(self.bundles)} models")
        log.info("serving: pub %s, req %s%s", " ".join(cfg.pub), " ".join(cfg.req),
                 f", http {' '.join(self.http.listening)}" if self.http else "", extra={"event": "ready"})

    def _start_http(self) -> None:
        try:
            from lited.service.http import HttpFront
        except ImportError as exc:
            raise ConfigError(str(self.config.path or "<config>"),
                              [f"http: needs the 'http' extra (pip install 'lited[http]'): {exc}"]) from None
        self.watchdog.register("http")
        self.http = HttpFront(self, self.config.http, heartbeat=lambda: self.watchdog.beat("http"))
        self.http.start()

    def make_model(self, name: str, bundle: Optional[Bundle] = None, threads: Optional[int] = None,
                   cpus: Optional[tuple] = None) -> Model:
        """Model `name` (from `bundle`, default its current one) in an engine
        process, on the engine and threads the config asks for, on `cpus`
        (a stream's, from the core plan; None, as for a request worker's: every
        core, as an app's own process would run it). A request worker's may be
        the spare warmed at start or reload."""
        if bundle is None and threads is None and cpus is None:
            with self.spares_kept:  # start-up warms every spare within READY_TIMEOUT, one after the other
                self.spares_kept.wait_for(lambda: name not in self.spares_warming,
                                          READY_TIMEOUT * max(1, len(self.spares_warming)))
                generation, spare = self.spares.pop(name, (None, None))
            if spare is not None and generation == self.generation.get(name) and not spare.engine_ended():
                return spare
            if spare is not None:
                spare.close()
        settings = self.config.model_settings.get(name, ModelSettings())
        return Model(bundle or self.bundles[name], isolated=True, run_timeout=self.config.engine_timeout,
                     cpus=cpus or self.cpus, **settings.model_kwargs(threads))

    def _warm_spares(self, bundles: dict, used: set) -> tuple:
        """({name: Model}, [(name, error)]): a model warmed up, as a request worker runs it, for
        each of `bundles` that no stream in `used` runs, so that a bundle that cannot run (a
        decoder that does not fit its outputs, say) is refused at start and at reload as a
        stream's is, not at its first request."""
        made, failed = {}, []
        for name, bundle in bundles.items():
            if name in used:
                continue
            self.watchdog.beat("main", READY_TIMEOUT)
            what = f"warming up {name} ({bundle.name} {bundle.version}): no stream runs it, for requests"
            self.notifier.status(what)
            log.info("%s", what, extra={"event": "warming_up", "bundle": f"{name} {bundle.name} {bundle.version}"})
            try:
                made[name] = self.make_model(name, bundle)
            except LOAD_ERRORS as exc:
                failed.append((name, exc))
        if failed:
            for model in made.values():
                model.close()
            made = {}
        return made, failed

    def _keep_spares(self, made: dict) -> None:
        """The models `_warm_spares` made take their names' places (after a reload's swap)."""
        for name, model in made.items():
            self._drop_spare(name)
            self.spares[name] = (self.generation.get(name, 0), model)

    def _drop_spare(self, name: str) -> None:
        _, old = self.spares.pop(name, (None, None))
        if old is not None:
            old.close()

    def _plan_threads(self, streams: list, bundles: Optional[dict] = None) -> dict:
        """Each stream's engine threads: as configured (else the bundle's, else 1),
        scaled down together when they would not fit the cores. `bundles`: the
        ones a reload is about to load, by model name (else those running)."""
        bundles = {**self.bundles, **(bundles or {})}
        requested = {}
        for sc in streams:
            settings = self.config.model_settings.get(sc.model, ModelSettings())
            requested[sc.name] = settings.threads or _bundle_threads(bundles.get(sc.model), settings)
        shared = share_threads(requested, len(self.cpus))
        if shared != requested:
            log.warning("engine threads asked for (%s) exceed the %d cores: running %s",
                        ", ".join(f"{n} {t}" for n, t in requested.items()), len(self.cpus),
                        ", ".join(f"{n} {t}" for n, t in shared.items()), extra={"event": "threads"})
        self.core_plan = plan_cores(shared, self.cpus, self.config.pin_engines,
                                    cores_of_other_engines() if self.config.pin_engines else ())
        apply_plan(self.core_plan)
        self.core_claim.publish(self.core_plan)
        for name, stream in self.streams.items():  # a reload: streams that keep running move too
            model = stream.model
            if model is not None and name in self.core_plan.engines:
                model.engine.move_to(self.core_plan.engines[name])
        if shared:
            log.info("cores: %s", self.core_plan.describe(), extra={"event": "threads"})
        return shared

    def _stream_model(self, sc: StreamConfig, bundle: Bundle):
        cpus = self.core_plan.engines.get(sc.name) if self.core_plan else None
        return lambda: self.make_model(sc.model, bundle, self.stream_threads.get(sc.name), cpus)

    def _start_stream(self, sc: StreamConfig, progress: str = "") -> Stream:
        """Warm up the stream's model, then start capturing."""
        stream, runner = self._prepare_stream(sc, self.bundles[sc.model], progress)
        self._run_stream(sc, stream, runner)
        return stream

    def _prepare_stream(self, sc: StreamConfig, bundle: Bundle, progress: str = "") -> tuple:
        """(the stream, its model warmed up), not capturing yet: seconds on a board, said in the
        log and the systemd status line. Raises if the model fails (nothing left running)."""
        if sc.name not in self.streams:  # a changed stream is listed as the running one meanwhile
            self.warming[sc.name] = sc
        what = f"stream {sc.name}{f' ({progress})' if progress else ''}: warming up {sc.model} ({bundle.name} {bundle.version})"
        self.notifier.status(what)
        log.info("%s", what, extra={"stream": sc.name, "event": "warming_up",  # BUNDLE=: what this start serves
                                    "bundle": f"{sc.model} {bundle.name} {bundle.version}"})
        t0 = time.monotonic()
        beat_name = f"infer-{sc.name}"
        stream = Stream(sc.name, sc.source, self._stream_model(sc, bundle), self._publish_result,
                        self._publish_event, slots=sc.slots, stall_timeout=sc.stall_timeout,
                        group=self.config.group, beat=lambda n=beat_name: self.watchdog.beat(n),
                        keep_results=sc.keep_results, policy=sc.policy, model_key=sc.model,
                        held_elsewhere=UPLINK_FRAMES_HELD if self.uplink is not None else 0,
                        on_ended=lambda n=beat_name: self.watchdog.unregister(n))
        try:
            runner = stream.prepare()
        except BaseException:
            self._drop_prepared(sc, None)
            raise
        log.info("stream %s: model ready in %.1f s", sc.name, time.monotonic() - t0,
                 extra={"stream": sc.name, "event": "warm"})
        return stream, runner

    def _drop_prepared(self, sc: StreamConfig, runner: Any) -> None:
        """A prepared stream not started (its warm-up or the reload around it failed)."""
        if runner is not None:
            runner.stop()
        if self.warming.get(sc.name) is sc:
            del self.warming[sc.name]
        self.watchdog.unregister(f"infer-{sc.name}")  # its runner beat; a running one of that name beats again

    def _run_stream(self, sc: StreamConfig, stream: Stream, runner: Any) -> None:
        """A prepared stream takes its name's place and captures."""
        stream.commit_model(runner, announce=False)
        self.watchdog.register(f"infer-{sc.name}")
        stream.start_capture()
        self.streams[sc.name] = stream
        self.stream_configs[sc.name] = sc
        self.warming.pop(sc.name, None)

    def _stop_stream(self, name: str) -> None:
        stream = self.streams.pop(name)
        self.stream_configs.pop(name, None)
        self.watchdog.unregister(f"infer-{name}")
        stream.stop()

    def stop(self) -> None:
        self.notifier.stopping("stopping")
        self._daemon_event("stopping", "")
        self.stop_event.set()
        if self.http is not None:
            self.http.stop()
            self.watchdog.unregister("http")
        # All at once: a stream on a camera that answered and sends nothing waits up to its stop
        # timeout for OpenCV's open (it cannot be cut short); one after another, three such took 18 s
        # of the unit's 20-s TimeoutStopSec.
        stopping = [threading.Thread(target=self._stop_stream, args=(name,), name=f"stop-{name}")
                    for name in list(self.streams)]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join()
        with self.spares_kept:  # none is coming (a start that failed or was stopped before its warm-up)
            for _, model in self.spares.values():
                model.close()
            self.spares.clear()
            self.spares_warming.clear()
            self.spares_kept.notify_all()
        if self.uplink is not None:
            self.uplink.stop()
        self.requests.stop()
        self.watchdog.stop()
        if self.bus is not None:
            self.bus.stop()
        self.core_claim.close()

    def run_forever(self) -> None:
        """Main thread: status line, stall checks, reloads asked for by SIGHUP."""
        next_status = 0.0
        while not self.stop_event.is_set():
            self.watchdog.beat("main")
            fault = Daemon.fault_hook
            if fault is not None:
                fault()
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.watchdog.beat("main", self.reload_grace())
                self.reload_config()
            for stream in list(self.streams.values()):
                stream.check_stall()
            now = time.monotonic()
            if now >= next_status:
                self.notifier.status(self.status_line())
                next_status = now + self.config.status_interval
            self.stop_event.wait(0.2)
        self.stop()

    # -- results and events (from the stream threads: nothing here may block)
    def _publish_result(self, result: dict) -> None:
        self.bus.publish(protocol.result_topic(result["stream"]), protocol.encode_result(result))
        if self.http is not None:
            self.http.on_result(result)
        if self.uplink is not None:
            self.uplink.offer_result(result)

    def _publish_event(self, event: dict) -> None:
        self.bus.publish(protocol.event_topic(event["stream"]), protocol.encode_event(event))
        if self.http is not None:
            self.http.on_event(event)
        if self.uplink is not None:
            self.uplink.offer_event(event)

    def _publish_answer(self, stream: str, answer: dict) -> None:
        """A server's answer to one of our crops, from the uplink: on the local bus."""
        self.bus.publish(protocol.answer_topic(stream), protocol.encode_answer(answer))

    def _hold_frame(self, result: dict) -> Optional[Frame]:
        """A lease of the result's own frame (the uplink's packer), None if it is gone."""
        stream = self.streams.get(result["stream"])
        return stream.hold_result_frame(result) if stream is not None else None

    def _health(self) -> dict:
        """The short health the uplink's retained status message carries."""
        return {"uptime_s": round(time.monotonic() - self.started, 1), "rss_mb": round(_rss_kb() / 1024, 1),
                "models": {n: b.version for n, b in list(self.bundles.items())},
                # every configured stream from the first message, as `status` lists them: one still warming
                # up is `starting` (the first, at connect, listed none)
                "streams": [{"stream": s.name, "state": s.current_state(), "fps": round(s.fps(), 2)}
                            for s in list(self.streams.values())]
                + [{"stream": sc.name, "state": "starting", "fps": 0.0} for sc in list(self.warming.values())],
                "last_reload": self.last_reload}

    def _daemon_event(self, kind: str, detail: str, **extra: Any) -> None:
        if self.bus is not None:
            self._publish_event({"stream": protocol.DAEMON_STREAM, "event": kind, "detail": detail,
                                 "ts": time.time(), **extra})

    def event(self, kind: str, detail: str) -> None:
        """A daemon event from the request core (an `engine` of a request worker)."""
        log.warning("%s: %s", kind, detail, extra={"event": kind})
        self._daemon_event(kind, detail)

    def reload_grace(self) -> float:
        """How long a reload may legitimately take: each stream's new model, and
        each model's spare, builds and warms up within READY_TIMEOUT, one after the other."""
        return READY_TIMEOUT * (len(self.streams) + len(self.bundles) + 1)

    # -- reload
    def reload_request(self, model: Optional[str], bundle: Optional[str], force: bool = False) -> dict:
        """The `reload` request. Without `model`: what SIGHUP does (the config
        file is read again). With it: that model only, from its configured
        bundle directory or `bundle` (which needs `model`). Raises ProtocolError("failed") when the
        reload failed (the old models keep serving)."""
        t0 = time.monotonic()
        if model is None and bundle is None:
            record = self.reload_config(force)
            if not record["ok"]:
                raise ProtocolError("failed", record["error"])
            return {"reloaded": record["reloaded"], "started": record["started"], "stopped": record["stopped"],
                    "removed": record["removed"], "needs_restart": record.get("needs_restart", []),
                    "took_ms": round((time.monotonic() - t0) * 1e3, 1)}
        if model is not None and model not in self.bundles:
            raise ProtocolError("not_found", f"params.model: no model {quoted(model)} (have {', '.join(self.bundles)})")
        if bundle is not None and model is None:  # never a default: a forced swap would replace it in silence
            raise ProtocolError("bad_request", f"params.model: needed with params.bundle (the key of the model to "
                                               f"load it for: {', '.join(self.bundles)})")
        names = [model] if model else list(self.bundles)
        paths = {n: bundle if bundle and n == (model or names[0]) else self.config.models[n] for n in names}
        try:
            self.reload_models(paths, force)
        except LOAD_ERRORS as exc:
            raise ProtocolError("failed", first_line(exc)) from None
        return {"reloaded": names, "started": [], "stopped": [], "removed": [], "needs_restart": [],
                "took_ms": round((time.monotonic() - t0) * 1e3, 1)}

    def reload_models(self, paths: dict, force: bool = False, leaving: frozenset = frozenset(),
                      loaded: Optional[dict] = None, warmed: frozenset = frozenset(), record: bool = True) -> dict:
        """Load the bundles at `paths` (model name -> dir), warm a new model for
        every stream using them (but the streams `leaving`, which the reload
        stops next) and a spare for each no stream runs (but those `warmed`
        by the reload's new streams), then swap all at once. Raises on
        failure (recorded): nothing is swapped and the old models keep
        serving. Their bundles before; recorded unless not `record` (the
        config's reload records what it added too, once it has)."""
        with self._reload_lock:
            self.notifier.reloading("reloading")
            before = {n: self.bundles[n] for n in paths}
            try:
                self._swap_models(paths, force, leaving, loaded or {}, warmed)
            except BaseException as exc:
                self._record_reload(False, first_line(exc))
                raise
            if record:
                self._record_reload(True, list(paths), before)
            return before

    def _swap_models(self, paths: dict, force: bool, leaving: frozenset, loaded: dict, warmed: frozenset) -> None:
        prepared: list = []
        spares: dict = {}
        try:
            new_bundles = {n: loaded[n] if n in loaded else load_bundle(p) for n, p in paths.items()}
            used = set(warmed)
            for name, stream in self.streams.items():
                sc = self.stream_configs[name]
                bundle = new_bundles.get(sc.model)
                if bundle is not None and name not in leaving and not stream.ended:
                    prepared.append((stream, stream.prepare_model(self._stream_model(sc, bundle), READY_TIMEOUT)))
                    used.add(sc.model)
            spares, failed = self._warm_spares(new_bundles, used)
            if failed:
                raise failed[0][1]
            for n, bundle in new_bundles.items():  # after the models load: a broken bundle says so first
                problem = change_problem(n, self.bundles[n], bundle)
                # going back to the config's bundle undoes a swap, whatever it changed: one that added a
                # stage, taken without --force, made every plain reload (and SIGHUP) refused after it
                back = paths[n] == self.config.models.get(n) and n in self.swapped_away
                if problem and not (force or back):
                    raise ReloadRefused(problem)
        except BaseException:
            for _, runner in prepared:
                runner.stop()
            for model in spares.values():
                model.close()
            raise
        for stream, runner in prepared:
            stream.commit_model(runner)
        for n, bundle in new_bundles.items():
            self.bundles[n] = bundle  # config.models keeps the configured path: a plain reload goes back to it
            self.generation[n] += 1
            self._drop_spare(n)
            if paths[n] == self.config.models.get(n):
                self.swapped_away.discard(n)
            else:
                self.swapped_away.add(n)
        self._keep_spares(spares)

    def reload_config(self, force: bool = False) -> dict:
        """SIGHUP and `lited ctl reload`: re-read the config; reload changed or
        all models (bundles may have changed in place), start new streams,
        stop removed ones. Returns the reload record (`ok`, `error` or
        `models`), with what was reloaded, started and stopped."""
        with self._reload_lock:
            outcome: dict = {"reloaded": [], "started": [], "stopped": [], "removed": []}
            try:
                new = load_config(self.config.path)
                new_bundles = load_bundles(new)
            except ConfigError as exc:
                return {**self._record_reload(False, f"{exc}; keeping the running config"), **outcome}
            self._reload_curve(new.curve)
            restart = [name for field, name in RESTART_FIELDS.items() if getattr(new, field) != getattr(self.config, field)]
            restart += uplink_restart_fields(self.uplink.cfg if self.uplink is not None else None, new.uplink)
            outcome["needs_restart"] = restart  # said in the reply too: `systemctl reload` shows no log line
            if restart:  # taken in silence before, and `lited ctl` then looked for the daemon where it was not
                log.warning("%s changed in the config: restart lited to apply (a reload applies models, engines, "
                            "streams, uplink rules and client keys)", ", ".join(restart), extra={"event": "reload"})
            kept = {n: p for n, p in new.models.items() if n in self.bundles}
            added = {n: p for n, p in new.models.items() if n not in self.bundles}
            wanted = {s.name: s for s in new.streams}
            leaving = frozenset(n for n in self.streams
                                if n not in wanted or _as_run(self.stream_configs[n]) != _as_run(wanted[n]))
            # the new models are made with the new config's engine, threads and cores (they were made with the
            # old ones, so an engine or threads change came one reload late), and back to the old on failure
            old_settings, self.config.model_settings = self.config.model_settings, new.model_settings
            kept_bundles = {n: new_bundles[n] for n in kept}
            # the threads the new bundles ask for (planned with the old ones, they came one reload late)
            self.stream_threads = self._plan_threads(new.streams, kept_bundles)
            # new and changed streams warm up first: one whose model fails fails the reload before anything
            # changed (it had swapped the models and started the streams before it, then said "failed")
            fresh: list = []
            added_spares: dict = {}
            swapping = False  # reload_models records its own failure
            before: dict = {}
            try:
                for name, sc in wanted.items():
                    if name not in self.streams or name in leaving:
                        fresh.append((sc, *self._prepare_stream(sc, new_bundles[sc.model])))
                added_spares, failed = self._warm_spares({n: new_bundles[n] for n in added},
                                                         {sc.model for sc in new.streams})
                if failed:
                    raise failed[0][1]
                if kept:
                    swapping = True
                    before = self.reload_models(kept, force, leaving, kept_bundles,
                                                frozenset(sc.model for sc, *_ in fresh), record=False)
            except LOAD_ERRORS as exc:
                for sc, _, runner in fresh:
                    self._drop_prepared(sc, runner)
                for model in added_spares.values():
                    model.close()
                self.config.model_settings = old_settings
                self.stream_threads = self._plan_threads(self.config.streams)
                if not swapping:
                    self._record_reload(False, f"{first_line(exc)}; the old models keep serving")
                return {**self.last_reload, **outcome}
            for n in added:
                self.bundles[n] = new_bundles[n]
                self.generation[n] = 0
                self.config.models[n] = added[n]
            self._keep_spares(added_spares)
            for n in [n for n in self.spares if n in {sc.model for sc in new.streams}]:
                self._drop_spare(n)  # a stream runs it now (its warm-up checks it); requests build theirs as before
            outcome["reloaded"] = list(new.models)
            outcome["removed"] = [n for n in self.bundles if n not in new.models]
            for name in [n for n in self.streams if n in leaving]:
                self._stop_stream(name)
                outcome["stopped"].append(name)
            for sc, stream, runner in fresh:
                self._run_stream(sc, stream, runner)
                outcome["started"].append(sc.name)
            self.config.streams = new.streams
            for n in outcome["removed"]:  # after the streams that ran it stopped; request workers drop theirs
                self._drop_spare(n)
                for table in (self.bundles, self.generation, self.config.models):
                    table.pop(n, None)
                self.swapped_away.discard(n)
                log.info("model %s removed: the config no longer has it", n, extra={"event": "reload"})
            if self.uplink is not None and new.uplink is not None:
                self.uplink.update_rules(new.uplink)
            # the models added too (recorded with the kept ones' swap, they were left out of
            # last_reload and the reload event)
            self._record_reload(True, list(new.models), before)
            return {**self.last_reload, **outcome}

    def _reload_curve(self, curve: Optional[dict]) -> None:
        """The allowed client keys are read again (a key removed is refused from its next
        connection); a new server key or a `curve:` added or removed needs a restart (the sockets
        were bound with the old), which is logged."""
        old = self.config.curve
        if curve and old and curve["server_secret"] == old["server_secret"]:
            if self.bus is not None:
                self.bus.allow_curve_keys(curve["clients_dir"])
            old["clients_dir"] = curve["clients_dir"]
        elif curve != old:
            log.warning("curve %s in the config: restart lited to apply (the client keys in use are those it "
                        "started with)", "changed" if curve and old else "added" if curve else "removed",
                        extra={"event": "reload"})

    def _record_reload(self, ok: bool, detail: Any, before: Optional[dict] = None) -> dict:
        """Every reload ends here: status, log, event, systemd (READY=1 even if
        something here fails, so RELOADING=1 is never left hanging). `detail`
        is the error, or the list of models (config keys) reloaded or added;
        `before` their bundles before the reload."""
        try:
            if ok:
                reloaded, before = detail, before or {}
                detail = ", ".join(_swapped(n, before.get(n, self.bundles[n]), self.bundles[n])
                                   for n in reloaded) or "none"
                self.last_reload = {"ok": True, "models": detail, "reloaded": reloaded, "ts": time.time()}
                log.info("reloaded %s", detail, extra={"event": "reloaded", "bundle": detail})
            else:
                self.last_reload = {"ok": False, "error": detail, "ts": time.time()}
                log.error("reload failed, old models keep serving: %s", detail, extra={"event": "reload_failed"})
            self._daemon_event("reload", detail, ok=ok)
        finally:
            self.notifier.ready(self.status_line())
        return self.last_reload

    # -- status
    def status(self) -> dict:
        rss_kb = _rss_kb()
        return {
            "version": __version__, "protocol": protocol.VERSION,
            "uptime_s": round(time.monotonic() - self.started, 1), "rss_mb": round(rss_kb / 1024, 1),
            # the kernel's high-water mark lags the current figure by a page or two: never below it
            "peak_rss_mb": round(max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, rss_kb) / 1024, 1),
            "engines_rss_mb": round(sum(_rss_kb(pid) for pid in child_pids()) / 1024, 1),
            "ready": self.ready,
            "models": {n: {"name": b.name, "version": b.version, "bundle": str(b.root), "task": b.task}
                       for n, b in list(self.bundles.items())},
            # copies: a reload (main thread) may add or remove streams while a front end asks
            "streams": [s.status() for s in list(self.streams.values())] + [
                {"stream": sc.name, "source": redact(sc.source), "state": "starting", "detail": "model warming up",
                 "engine_down": None, "fps": 0.0, "counters": dict.fromkeys(COUNTERS, 0), "latency_ms": {}, "ring": None,
                 "policy": sc.policy or source_policy(sc.source),
                 "model": None}
                for sc in list(self.warming.values())],
            "last_reload": self.last_reload,
            "watchdog_stale": self.watchdog.stale(),
            "requests": self.requests.stats(),
            "bus": self.bus.stats() if self.bus is not None else {},
            **({"http": self.http.status()} if self.http is not None else {}),
            "uplink": self.uplink.status() if self.uplink is not None else None,
        }

    def status_line(self) -> str:
        parts = [f"{s.name} {s.current_state()} {s.fps():.1f} fps" for s in list(self.streams.values())]
        models = ", ".join(f"{n} {b.version}" for n, b in list(self.bundles.items()))
        line = "; ".join(parts) or "no streams"
        if self.last_reload and not self.last_reload.get("ok"):
            line += " | last reload FAILED (a restart reads the same file)"
        if self.uplink is not None:
            line += f" | {self.uplink.status_line()}"
        return f"{line} | models: {models}"



def _swapped(name: str, old: Any, new: Any) -> str:
    """`face ultraface 1.1.0`, or `face mobilenetv2 1.0.0 (was ultraface 1.0.0)` when the bundle changed."""
    was = f" (was {old.name} {old.version})" if (old.name, old.version) != (new.name, new.version) else ""
    return f"{name} {new.name} {new.version}{was}"


def _bundle_threads(bundle: Optional[Bundle], settings: ModelSettings) -> int:
    """The threads the bundle's options give the engine that will run it here (1 if none)."""
    if bundle is None:
        return 1
    try:
        return bundle.engine_threads(None, settings.engine, settings.precision)
    except (BundleError, KeyError, TypeError, ValueError):
        return 1


def _rss_kb(pid: object = "self") -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except OSError:
        return 0


# config fields a reload does not apply (the sockets, the request workers and the limits are made at
# start): file name of each
RESTART_FIELDS = {"runtime_dir": "runtime_dir", "state_dir": "state_dir", "pub": "endpoints.pub",
                  "req": "endpoints.req", "group": "group", "insecure_tcp": "insecure_tcp",
                  "max_request_bytes": "limits.max_request_bytes", "pub_hwm": "limits.pub_hwm",
                  "max_inflight_bytes": "limits.max_inflight_bytes", "max_clients": "limits.max_clients",
                  "engine_timeout": "limits.engine_timeout", "request_workers": "request_workers",
                  "status_interval": "status_interval", "pin_engines": "pin_engines", "http": "http"}


def _as_run(sc: StreamConfig) -> StreamConfig:
    """`sc` with the policy its stream runs with: a reload that writes out the
    default policy changes nothing (it restarted the stream)."""
    return dataclasses.replace(sc, policy=sc.policy or source_policy(sc.source))


def serve(config_path: str, insecure_tcp: bool = False, early_signals: Sequence[int] = ()) -> int:
    """`lited serve`: run until SIGTERM; bad config or bundle -> exception before anything starts.
    `early_signals`: what came before the daemon's handlers (a SIGTERM then stops it at once)."""
    config = load_config(config_path)
    return_freed_memory()
    open_files = raise_open_files_limit()
    if open_files < LOW_OPEN_FILES:
        log.warning("open files: the limit is %d (ulimit -n, LimitNOFILE=): about that many subscriber and client "
                    "connections end the daemon (libzmq aborts on an accept that fails); raise it", open_files,
                    extra={"event": "open_files"})
    daemon = Daemon(config, insecure_tcp)
    daemon.install_signal_handlers(early_signals)
    try:
        daemon.start()
    except BaseException:
        daemon.stop()
        raise
    daemon.run_forever()
    return 0
