"""`GET /metrics`: the daemon's figures in Prometheus' text format (docs/http.md).

The official client library (prometheus_client) writes the exposition; one
collector reads `status()` and the streams' latency histograms when
Prometheus scrapes, so metrics cost nothing per frame beyond the histogram
buckets each stream's own thread bumps (stream/stats.py). prometheus_client
is imported at the first scrape, with its own registry (none of its default
process collectors: the daemon reports its own and its engines' memory).
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

from lited.stream.stats import BUCKETS_MS, STAGES
from lited.stream.stream import STATES as STREAM_STATES

STATES = ("starting", *STREAM_STATES)  # starting: the daemon's, its model warming up
COUNTER_NAMES = {"captured": "frames_captured", "inferred": "frames_inferred", "skipped": "frames_skipped",
                 "torn": "frames_torn", "reconnects": "reconnects", "errors": "errors",
                 "engine_restarts": "engine_restarts"}
MB = 1 << 20
# The classic text format, which every Prometheus version reads (names here are all plain ASCII)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """Renders /metrics. `status` is the daemon's status(); `streams` its
    name -> Stream; `http_figures` the front end's own counters."""

    def __init__(self, status: Callable[[], dict], streams: dict, http_figures: Callable[[], dict]) -> None:
        self.status = status
        self.streams = streams
        self.http_figures = http_figures
        self._registry: Any = None

    def render(self) -> tuple:
        """(body, content type) of one scrape."""
        from prometheus_client import generate_latest

        if self._registry is None:
            from prometheus_client import CollectorRegistry

            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(_Collector(self))
        return generate_latest(self._registry), CONTENT_TYPE


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                            InfoMetricFamily)

        st = self.m.status()
        yield InfoMetricFamily("lited_build", "lited version", value={"version": st["version"]})
        yield _gauge(GaugeMetricFamily, "lited_uptime_seconds", "seconds since the daemon started",
                     [((), st["uptime_s"])])
        yield _gauge(GaugeMetricFamily, "lited_memory_rss_bytes",
                     "resident memory: the daemon, and its engine processes together",
                     [(("daemon",), st["rss_mb"] * MB), (("engines",), st["engines_rss_mb"] * MB)], ["process"])
        yield _gauge(GaugeMetricFamily, "lited_memory_peak_rss_bytes", "peak resident memory of the daemon process",
                     [((), st["peak_rss_mb"] * MB)])
        models = InfoMetricFamily("lited_model", "models loaded", labels=["model"])
        for name, m in st["models"].items():
            models.add_metric([name], {"version": m["version"], "task": m["task"]})
        yield models
        last = st.get("last_reload") or {}
        if last:
            yield _gauge(GaugeMetricFamily, "lited_last_reload_success", "1 if the last reload succeeded, else 0",
                         [((), 1.0 if last.get("ok") else 0.0)])
            yield _gauge(GaugeMetricFamily, "lited_last_reload_timestamp_seconds", "when the last reload ended",
                         [((), last.get("ts", 0.0))])
        yield _gauge(GaugeMetricFamily, "lited_watchdog_stale_loops", "loops that missed their watchdog beat",
                     [((), len(st.get("watchdog_stale", [])))])
        yield from self._streams(st["streams"], CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                 InfoMetricFamily)
        if st.get("uplink"):
            yield from self._uplink(st["uplink"], CounterMetricFamily, GaugeMetricFamily)
        yield from self._http(CounterMetricFamily, GaugeMetricFamily)

    def _uplink(self, up: dict, Counter: Any, Gauge: Any) -> Iterator[Any]:
        """The MQTT uplink: what a fleet alerts on (a broker out of reach, a backlog growing, records
        lost, an outbox that cannot write), which only `status` told."""
        box, counters = up["outbox"], up["counters"]
        yield _gauge(Gauge, "lited_uplink_connected", "1 while the uplink is connected to its broker",
                     [((), 1.0 if up["connected"] else 0.0)])
        yield _gauge(Gauge, "lited_uplink_outbox_records", "records in the outbox not yet confirmed",
                     [((), box["queued"])])
        yield _gauge(Gauge, "lited_uplink_outbox_bytes", "bytes of the outbox's segments on disk",
                     [((), box["bytes"])])
        yield _gauge(Gauge, "lited_uplink_outbox_failing", "1 while the outbox cannot write (outbox.problem)",
                     [((), 1.0 if box.get("problem") else 0.0)])
        lost = Counter("lited_uplink_records_lost", "records the outbox dropped (full) or refused",
                       labels=["reason"])
        lost.add_metric(["dropped"], box["dropped"])
        lost.add_metric(["refused"], box["refused"])
        yield lost
        sent = Counter("lited_uplink_records", "records sent, sent again and confirmed, since the start",
                       labels=["outcome"])
        for outcome in ("sent", "resent", "acked"):
            sent.add_metric([outcome], counters[outcome])
        yield sent

    def _streams(self, streams: list, Counter: Any, Gauge: Any, Histogram: Any, Info: Any) -> Iterator[Any]:
        fps = Gauge("lited_stream_fps", "capture rate over the last frames", labels=["stream"])
        state = Gauge("lited_stream_state", "1 for the state the stream is in", labels=["stream", "state"])
        # the source may stream on while the engine is down: `state` does not show it (status: engine_down)
        engine_down = Gauge("lited_stream_engine_down", "1 while the stream's engine process is down and being "
                            "restarted", labels=["stream"])
        model = Info("lited_stream_model", "the model a stream runs", labels=["stream"])
        busy = Counter("lited_stream_engine_busy_seconds", "seconds the stream's engine computed (its rate: the "
                       "share of the time the engine is busy)", labels=["stream"])
        stage_busy = Counter("lited_stream_stage_engine_busy_seconds", "seconds the engine of a later stage of "
                             "the stream's cascade computed", labels=["stream", "stage"])
        counters = {key: Counter(f"lited_stream_{name}", f"stream {name.replace('_', ' ')} since the start",
                                 labels=["stream"]) for key, name in COUNTER_NAMES.items()}
        hist = Histogram("lited_stage_latency_seconds", "latency of each stage of a stream's results, "
                         "per model version", labels=["stream", "model", "version", "stage"])
        recent = Gauge("lited_stage_latency_recent_seconds", "p50 and p99 over the last 512 results "
                       "(as lited ctl status shows; not to be aggregated: use the histogram)",
                       labels=["stream", "stage", "q"])  # not `quantile`: Prometheus keeps it for summaries
        for s in streams:
            name = s["stream"]
            fps.add_metric([name], s["fps"])
            for st in STATES:
                state.add_metric([name, st], 1.0 if s["state"] == st else 0.0)
            engine_down.add_metric([name], 1.0 if s.get("engine_down") else 0.0)
            if s.get("model"):
                model.add_metric([name], {"model": s["model"]["name"], "version": s["model"]["version"]})
                busy.add_metric([name], s["model"]["engine_busy_s"])
                for stage in s["model"]["stages"]:
                    stage_busy.add_metric([name, stage["name"]], stage["engine_busy_s"])
            for key, value in s["counters"].items():
                if key in counters:
                    counters[key].add_metric([name], value)
            for stage, q in s["latency_ms"].items():
                recent.add_metric([name, stage, "0.5"], q["p50"] / 1e3)
                recent.add_metric([name, stage, "0.99"], q["p99"] / 1e3)
            stream = self.m.streams.get(name)
            for (model_name, version), h in list(stream.stats.histograms.items()) if stream else ():
                for stage in STAGES:
                    counts, total = list(h.counts[stage]), h.sums[stage]
                    buckets, cumulative = [], 0
                    for bound, n in zip(BUCKETS_MS, counts):
                        cumulative += n
                        buckets.append((_le(bound), cumulative))
                    buckets.append(("+Inf", cumulative + counts[-1]))
                    hist.add_metric([name, model_name, version, stage], buckets, sum_value=total / 1e3)
        yield from (fps, state, engine_down, model, busy, stage_busy, *counters.values(), hist, recent)

    def _http(self, Counter: Any, Gauge: Any) -> Iterator[Any]:
        figures = self.m.http_figures()
        requests = Counter("lited_http_requests", "HTTP requests answered, by route and status",
                           labels=["route", "code"])
        for (route, code), n in figures["requests"].items():
            requests.add_metric([route, str(code)], n)
        yield requests
        yield _gauge(Gauge, "lited_http_clients", "streaming HTTP clients now",
                     [(("live",), figures["live_clients"]), (("events",), figures["event_clients"])], ["kind"])
        live = Counter("lited_live_frames", "live (MJPEG) frames encoded, and results skipped because their "
                       "frame was overwritten before it was read", labels=["stream", "outcome"])
        for stream, (encoded, overwritten) in figures["live"].items():
            live.add_metric([stream, "encoded"], encoded)
            live.add_metric([stream, "overwritten"], overwritten)
        yield live


def _le(bound_ms: float) -> str:
    return repr(bound_ms / 1e3)


def _gauge(family: Any, name: str, doc: str, samples: list, labels: Optional[list] = None) -> Any:
    g = family(name, doc, labels=labels or [])
    for values, value in samples:
        g.add_metric(list(values), value)
    return g
