"""The MQTT uplink: selected results, crops, events and health to a broker;
answers and remote requests back (docs/uplink.md).

Rules it keeps:
- the stream threads only choose (labels, score, rate) and hand a result to
  a bounded queue: they never wait for the disk, the network or JPEG
  encoding (a full queue is counted as `busy`);
- a selected result that attaches images takes a lease of its frame in the
  ring at once (up to `LEASES_QUEUED` per stream; the ring is sized for
  them), so the packer cuts its crops from that very frame however far it
  lags; past that, the packer leases the frame when it comes to it, and one
  the ring already reused is counted as `frame_gone`; it cuts and encodes the crops; the
  store thread writes the result and its images to the outbox together with
  everything else packed meanwhile (one fdatasync): durable before counted;
- the sender thread hands paho at most `window` unacknowledged records
  (paho's own queue is unbounded); a record leaves the outbox when the
  broker acknowledges it (`ack: broker`) or when `lited cloud` does
  (`ack: cloud`: an `ack` message, or the answer to a crop or frame), and
  is sent again after `resend_after` seconds until then;
- everything from the broker is untrusted: a bad message is counted and
  dropped; requests are taken only from this device's own request topic and
  go through the same request core as the local bus.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import queue
import threading
import time
from typing import Any, Callable, Optional


from lited import __version__
from lited import uplink_protocol as up
from lited.config import UPLINK_FILES, UplinkConfig
from lited.crops import crop_rect, encode_jpeg
from lited.errors import first_line
from lited.mqtt_link import REFUSED, BrokerSettings, ConnectWatch, connect_async, make_client, publish_properties
from lited.protocol import ProtocolError
from lited.service.outbox import DROP_LOG_INTERVAL, Outbox
from lited.stream.handoff import Frame

log = logging.getLogger("lited.uplink")
QUEUE_SIZE = 256
PACK_BATCH = 32
EARLY_PUBACK_S = 5.0      # a PUBACK can beat publish() returning by milliseconds, never by seconds
SEEN_ANSWERS = 4096
MAX_RESEND_INTERVAL = 60.0
JSON_TYPE = "application/json"
JPEG_TYPE = "image/jpeg"
COUNTERS = ("selected", "rate_limited", "busy", "frame_gone", "queued", "refused", "sent", "resent",
            "acked", "refused_by_broker", "answers", "duplicate_answers", "bad_messages", "requests",
            "requests_refused")

LEASES_QUEUED = 2         # frames per stream leased by waiting results (see UPLINK_FRAMES_HELD)
UPLINK_FRAMES_HELD = LEASES_QUEUED + 1   # leases per stream at once: those waiting, and one the packer takes itself

# (result) -> a lease of its frame in the ring (`view()`, then `release()` once), None if it is gone
HoldFrame = Callable[[dict], Optional[Frame]]
# (method, params, done(result, error)): the request core (service/requests.py)
Call = Callable[[str, dict, Callable[[Any, Optional[ProtocolError]], None]], None]


def settings_of(cfg: UplinkConfig) -> BrokerSettings:
    return BrokerSettings(cfg.broker, cfg.ca, cfg.cert, cfg.key, cfg.username, cfg.password_file, cfg.keepalive,
                          names=UPLINK_FILES)


class Uplink:
    """The MQTT link of `uplink:` in the config (the module's docstring says how it goes)."""
    def __init__(self, cfg: UplinkConfig, call: Call, publish_local: Callable[[str, dict], None],
                 hold_frame: HoldFrame, health: Callable[[], dict]) -> None:
        self.cfg = cfg
        self.device = cfg.device
        self._call = call
        self._publish_local = publish_local
        self._hold_frame = hold_frame
        self._leased: collections.Counter = collections.Counter()  # stream -> leases of waiting results
        self._health = health
        self.outbox: Optional[Outbox] = None
        self.client: Any = None
        self.connected = threading.Event()
        self.last_error = ""
        self._connack_refused = False            # the broker's last CONNACK refused us (last_error says why)
        self.counters = dict.fromkeys(COUNTERS, 0)
        self._count_lock = threading.Lock()
        self._refusal_logged = -DROP_LOG_INTERVAL  # when a broker's refusal was last logged (monotonic s)
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
        self._last_selected: dict = {}           # stream -> monotonic time (max_rate)
        self._lock = threading.Lock()            # the maps below; never held around client.publish()
        self._inflight: dict = {}                # mid -> seq, waiting for PUBACK
        self._inflight_seqs: set = set()
        self._early: dict = {}                   # mid -> (reason code, time) of a PUBACK before publish() returned
        self._replies: collections.OrderedDict = collections.OrderedDict()  # mid -> topic of a request's reply
        self._unconfirmed: collections.OrderedDict = collections.OrderedDict()  # seq -> [where, sent at, resent]
        self._seen_answers: collections.OrderedDict = collections.OrderedDict()
        # seq -> time.monotonic() when stored, for the crops and frames of this run awaiting an answer
        # (round_trip_ms: their queued_ts is wall time, which NTP steps on a board without an RTC)
        self._images_stored: collections.OrderedDict = collections.OrderedDict()
        self._round_trips: collections.deque = collections.deque(maxlen=512)
        self._resend_interval = cfg.resend_after
        self._acked_since_resend = True
        self._srtt = 0.0                         # smoothed send -> confirmed time, first sends only (Karn)
        self._status_due = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._stored: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)   # packed, to be written
        self._threads = [threading.Thread(target=self._pack_loop, name="uplink-pack", daemon=True),
                         threading.Thread(target=self._store_loop, name="uplink-store", daemon=True),
                         threading.Thread(target=self._send_loop, name="uplink-send", daemon=True)]
        self._tids: list = []

    # -- lifecycle
    def start(self) -> None:
        cfg = self.cfg
        self.outbox = Outbox(str(cfg.outbox_dir), cfg.outbox_max_bytes)
        self._cursor = self.outbox.acked_below - 1
        status = up.topic(self.device, "status")
        self.client = make_client(settings_of(cfg), self.device, will=(status, lambda: up.to_json(self._offline())))
        self.client.max_inflight_messages_set(cfg.window)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self._watch = ConnectWatch(self.client, self._connect_trouble)
        connect_async(self.client, settings_of(cfg), max_packet=up.MAX_DEVICE_PACKET)
        for t in self._threads:
            t.start()
        log.info("uplink to %s as %s, outbox %s (%d queued)", cfg.broker, self.device, cfg.outbox_dir,
                 self.outbox.stats()["queued"], extra={"event": "uplink"})

    def stop(self, timeout: float = 5.0) -> None:
        """Store what is queued, say offline, disconnect."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        started = [t for t in self._threads if t.ident is not None]   # start() may have failed half way
        for t in started[:2]:
            t.join(timeout)
        self._stop.set()
        self._wake.set()
        for t in started[2:]:
            t.join(timeout)
        if self.client is not None:
            if self.connected.is_set():
                info = self.client.publish(up.topic(self.device, "status"), up.to_json(self._offline()), qos=1,
                                           retain=True)
                try:
                    info.wait_for_publish(2)
                except (RuntimeError, ValueError):
                    pass
            self.client.disconnect()
            self.client.loop_stop()
        if self.outbox is not None:
            self.outbox.close()

    def update_rules(self, cfg: UplinkConfig) -> None:
        """A reload: new rules (and `events`) apply to the next result; the other fields need a
        restart, which the reload names (config.uplink_restart_fields)."""
        self.cfg.rules = cfg.rules
        self.cfg.events = cfg.events

    # -- from the stream threads: choose, never block
    def offer_result(self, result: dict) -> None:
        rule = self.cfg.rule_for(result["stream"])
        if rule is None:
            return
        labels, min_score = rule.labels, rule.min_score
        dets = [(i, d) for i, d in enumerate(result["detections"])
                if d["score"] >= min_score and (labels is None or d["label"] in labels)]
        classes = [c for c in result["classes"] if c["score"] >= min_score and (labels is None or c["label"] in labels)]
        if not dets and not classes:
            return
        if rule.max_rate is not None:
            now = time.monotonic()
            if now - self._last_selected.get(result["stream"], -1e9) < 1.0 / rule.max_rate:
                self._count("rate_limited")
                return
            self._last_selected[result["stream"]] = now
        self._count("selected")
        self._offer(("result", result, dets, classes, rule, self._lease(result, rule)))

    def offer_event(self, event: dict) -> None:
        if self.cfg.events:
            self._offer(("event", event))

    def _lease(self, result: dict, rule: Any) -> Optional[Frame]:
        """The frame of a result whose images will be cut, leased while its stream has a lease to spare."""
        stream = result["stream"]
        with self._count_lock:
            if rule.attach == "none" or self._leased[stream] >= LEASES_QUEUED:
                return None
            self._leased[stream] += 1
        lease = self._hold_frame(result)
        if lease is None:
            self._give_back(stream, None)
        return lease

    def _give_back(self, stream: str, lease: Optional[Frame]) -> None:
        if lease is not None:
            lease.release()
        with self._count_lock:
            self._leased[stream] -= 1

    def _offer(self, item: tuple) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._count("busy")
            if item[0] == "result" and item[5] is not None:
                self._give_back(item[1]["stream"], item[5])

    def _count(self, name: str, n: int = 1) -> None:
        with self._count_lock:
            self.counters[name] += n

    # -- packer thread: frames -> crops -> JPEG; store thread: -> outbox
    def _pack_loop(self) -> None:
        """Take what is queued (up to PACK_BATCH), first copy the pixels of every
        crop while the frames are still in the ring, then encode; the store
        thread writes, so a slow disk never delays reading the frames."""
        self._tids.append(threading.get_native_id())
        while True:
            items = [self._queue.get()]
            while len(items) < PACK_BATCH and items[-1] is not None:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            last = items[-1] is None
            items = [item for item in items if item is not None]
            pixels = [self._cut(item) for item in items]
            self._stored.put([self._records(item, images) for item, images in zip(items, pixels)])
            if last:
                self._stored.put(None)
                return

    def _store_loop(self) -> None:
        """Everything packed so far in one put_many: one fdatasync for all (group commit)."""
        self._tids.append(threading.get_native_id())
        while True:
            batches = self._stored.get()
            last = batches is None
            batches = batches or []
            while not last:
                try:
                    more = self._stored.get_nowait()
                except queue.Empty:
                    break
                last = more is None
                batches += more or []
            self._store(batches)
            if last:
                return

    def _store(self, batches: list) -> None:
        """`batches`: the records of one result or event each; stored together."""
        records = [r for batch in batches for r in batch]
        try:
            seqs = self.outbox.put_many(records) if records else []
        except ValueError as exc:      # a record over the limit: store the others, one result at a time
            if len(batches) > 1:
                for batch in batches:
                    self._store([batch])
                return
            self.outbox.refuse(len(records), str(exc))
            seqs = None
        except OSError as exc:         # a failing disk: counted, never raised into the daemon
            self.outbox.refuse(len(records), f"cannot store them: {exc.strerror or exc}", failing=True)  # said every 10 s
            seqs = None
        if seqs is None:
            self._count("refused", len(batches))
        else:
            self._count("queued", len(seqs))
            self._note_images(seqs, records)
            self._wake.set()

    def _note_images(self, seqs: list, records: list) -> None:
        """When the crops and frames among `records` (stored as `seqs`) were stored, for round_trip_ms."""
        now = time.monotonic()
        with self._lock:
            for seq, (topic, _, _) in zip(seqs, records):
                if (up.parse_topic(topic) or ("", ""))[1] in ("crops", "frames"):
                    self._images_stored[seq] = now
            while len(self._images_stored) > SEEN_ANSWERS:
                self._images_stored.popitem(last=False)

    def _cut(self, item: tuple) -> list:
        """[(detection index or None for the whole frame, detection, pixels)] of a result."""
        if item[0] != "result" or item[4].attach == "none":
            return []
        _, result, dets, _, rule, queued = item
        lease = queued or self._hold_frame(result)
        if lease is None:
            self._count("frame_gone")
            return []
        try:
            frame = lease.view()
            if rule.attach == "frame":
                return [(None, None, frame.copy())]
            h, w = frame.shape[:2]
            out = []
            for index, det in dets[:rule.max_crops]:
                rect = crop_rect(det["box"], rule.margin, w, h)
                if rect is not None:
                    x1, y1, x2, y2 = rect
                    out.append((index, det, frame[y1:y2, x1:x2].copy()))
            return out
        finally:
            if queued is not None:
                self._give_back(result["stream"], queued)
            else:
                lease.release()

    def _records(self, item: tuple, images: list) -> list:
        """(topic, meta, payload) of an event, or of a result and its images."""
        if item[0] == "event":
            event = item[1]
            return [(up.topic(self.device, "events", event["stream"]), _meta(JSON_TYPE),
                     up.to_json(up.event_message(self.device, event)))]
        _, result, dets, classes, rule, _ = item
        stream = result["stream"]
        crops = [index for index, _, _ in images if index is not None]
        message = up.result_message(self.device, result, [{**d, "index": i} for i, d in dets], classes, crops,
                                    any(index is None for index, _, _ in images))
        records = [(up.topic(self.device, "results", stream), _meta(JSON_TYPE), up.to_json(message))]
        now = time.time()
        for index, det, image in images:
            props = up.image_properties(stream, result["seq"], result.get("frame_ts"), det, index, now)
            kind = "frames" if det is None else "crops"
            records.append((up.topic(self.device, kind, stream), _meta(JPEG_TYPE, props),
                            encode_jpeg(image, rule.jpeg_quality)))
        return records

    # -- sender thread: outbox -> paho, within the window; resends; status
    def _send_loop(self) -> None:
        self._tids.append(threading.get_native_id())
        failing = None  # why the last round failed, said once
        while not self._stop.is_set():
            self._wake.wait(0.25)
            self._wake.clear()
            if not self.connected.is_set():
                continue
            try:
                self._send_round()
            except OSError as exc:  # the outbox unreadable for now (no descriptors left: a flood): this thread
                if failing != str(exc):  # died of it, status said "connected", and nothing more was sent
                    log.error("uplink: cannot read the outbox: %s; trying again every second", exc,
                              extra={"event": "uplink"})
                failing = str(exc)
                self._stop.wait(1.0)
                continue
            if failing is not None:
                log.warning("uplink: reading the outbox again", extra={"event": "uplink"})
                failing = None

    def _send_round(self) -> None:
        """Status when due, records due again, then new records up to the window."""
        now = time.monotonic()
        if now >= self._status_due:
            self._status_due = now + self.cfg.status_interval
            self._publish_status()
        self._resend_due(now)
        with self._lock:
            room = self.cfg.window - len(self._unconfirmed)
            in_flight = sum(entry[0][2] for entry in self._unconfirmed.values())
        if room > 0:
            for rec in self.outbox.read(self._cursor, room):
                # bytes too, not records alone: on a thin link 64 frames are minutes of paho's queue, where
                # the acknowledgements and keepalive pings wait behind them (nothing was confirmed again)
                if not self.connected.is_set() or (in_flight and in_flight + rec.where[2] > self.cfg.window_bytes):
                    break
                in_flight += rec.where[2]
                self._send(rec)
                self._cursor = rec.seq
                self._count("sent")

    def _send(self, rec: Any, resent: bool = False) -> None:
        meta = _parse_meta(rec.meta)
        user = [(up.ID_PROPERTY, up.message_id(self.device, self.outbox.epoch, rec.seq)), *meta.get("up", [])]
        props = publish_properties(user, meta.get("ct"))
        with self._lock:
            self._unconfirmed[rec.seq] = [rec.where, time.monotonic(), resent]
            self._unconfirmed.move_to_end(rec.seq)
        info = self.client.publish(rec.topic, rec.payload, qos=1, properties=props)
        with self._lock:
            early = self._early_puback(info.mid)
            if early is None:
                self._inflight[info.mid] = rec.seq
                self._inflight_seqs.add(rec.seq)
        if early is not None:
            self._puback(rec.seq, early)

    def _early_puback(self, mid: int) -> Any:
        """The reason code of `mid`'s PUBACK if it came before publish()
        returned, else None (then the caller files `mid`). Lock held."""
        early = self._early.pop(mid, None)
        if early is None or time.monotonic() - early[1] > EARLY_PUBACK_S:
            return None                          # none, or a status message's, its mid since reused
        return early[0]

    def _resend_due(self, now: float) -> None:
        """Records sent, acknowledged by the broker but not by the cloud
        (`ack: cloud`) go again (the server drops duplicates by id) after
        `resend_after` s, or 4 times the smoothed confirmation time if that is
        longer (busy servers are not flooded with copies of what they queue);
        the interval doubles up to 60 s while nothing is confirmed, so a fleet
        without a running `lited cloud` stays quiet."""
        timeout = max(self._resend_interval, 4 * self._srtt)
        with self._lock:
            due = [(seq, entry[0]) for seq, entry in self._unconfirmed.items()
                   if seq not in self._inflight_seqs and now - entry[1] >= timeout]
        if not due:
            return
        self._resend_interval = (self.cfg.resend_after if self._acked_since_resend
                                 else min(MAX_RESEND_INTERVAL, self._resend_interval * 2))
        self._acked_since_resend = False
        for seq, where in due:
            rec = self.outbox.read_at(where) if self.outbox.is_pending(seq) else None
            if rec is None:            # acknowledged meanwhile, or dropped from a full outbox
                with self._lock:
                    self._unconfirmed.pop(seq, None)
                continue
            self._send(rec, resent=True)
            self._count("resent")

    def _publish_status(self) -> None:
        message = {"v": up.VERSION, "type": "status", "device": self.device, "state": "online", "ts": time.time(),
                   "version": __version__, **self._health(), "uplink": self._link_status()}
        self.client.publish(up.topic(self.device, "status"), up.to_json(message), qos=1, retain=True,
                            properties=publish_properties(content_type=JSON_TYPE))

    def _offline(self) -> dict:
        return {"v": up.VERSION, "type": "status", "device": self.device, "state": "offline", "ts": time.time()}

    # -- paho's thread: never wait for anything held around client.publish()
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:  # said once per new reason (it was at every retry, every 5 s)
            self.last_error = f"cannot connect to {self.cfg.broker}: {REFUSED}: {reason_code}"
            self._watch.refused(f"{REFUSED}: {reason_code}")
            self._connack_refused = True
            return
        self._connack_refused = False
        if self.cfg.requests:
            client.subscribe(up.topic(self.device, "req"), qos=1)
        else:  # a kept session may hold the subscription of a run with requests on: requests then came, unanswered
            client.unsubscribe(up.topic(self.device, "req"))
        client.subscribe([(up.topic(self.device, "answers", "+"), 1), (up.topic(self.device, "ack"), 1)])
        self.last_error = ""
        self._watch.connected()
        self._status_due = 0.0
        self.connected.set()
        self._wake.set()
        log.info("uplink: connected to %s", self.cfg.broker, extra={"event": "uplink_connected"})

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        reason = self._watch.reason
        self.last_error = f"cannot connect to {self.cfg.broker}" + (f": {reason}" if reason else "")

    def _connect_trouble(self, reason: str) -> None:
        """A new reason for not being connected: logged once, not at every retry."""
        if reason and not self._stop.is_set():
            log.warning("uplink: %s: %s; retrying", self.cfg.broker, reason, extra={"event": "uplink_lost"})

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        was_connected = self.connected.is_set()
        if was_connected and not self._stop.is_set():
            # paho says "Unspecified error" for a connection the broker closed without a DISCONNECT (a stop)
            why = self._watch.reason or ("the broker closed the connection" if str(reason_code) == "Unspecified error"
                                         else str(reason_code))
            log.warning("uplink: disconnected (%s); reconnecting", why, extra={"event": "uplink_lost"})
        self.connected.clear()
        if not was_connected and self._connack_refused:
            return  # the CONNACK said why; paho's disconnect after it says only "Protocol error"
        reason = self._watch.reason
        said = reason if reason and reason_code.is_failure else reason_code
        if not was_connected and self.last_error == f"disconnected: {said}":
            return  # paho tells a keepalive loss twice: the second is no failed connect
        # a connection that never came up (a TLS 1.3 broker refuses a client certificate after the
        # handshake: paho then calls this, not on_connect_fail) could not connect: it was "disconnected"
        self.last_error = f"disconnected: {said}" if was_connected else f"cannot connect to {self.cfg.broker}: {said}"

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        with self._lock:
            seq = self._inflight.pop(mid, None)
            reply_to = self._replies.pop(mid, None) if seq is None else None
            if seq is None and reply_to is None:  # before publish() returned, or a status message
                self._early.pop(mid, None)
                self._early[mid] = (reason_code, time.monotonic())
                while len(self._early) > 1024:
                    self._early.pop(next(iter(self._early)))
                return
            if seq is not None:
                self._inflight_seqs.discard(seq)
        if seq is None:
            self._reply_acked(reply_to, reason_code)
            return
        self._puback(seq, reason_code)

    def _reply_acked(self, reply_to: str, reason_code: Any) -> None:
        if reason_code.is_failure:                # e.g. 0x87: the ACL grants resp/+ to this device, not that topic
            self._refused_by_broker(f"the reply to {reply_to}", reason_code)

    def _refused_by_broker(self, what: str, reason_code: Any) -> None:
        """Counted every time, logged at most every DROP_LOG_INTERVAL s (an ACL
        that refuses a topic refuses every record of it)."""
        self._count("refused_by_broker")
        now = time.monotonic()
        with self._count_lock:
            if now - self._refusal_logged < DROP_LOG_INTERVAL:
                return
            self._refusal_logged = now
        log.warning("uplink: the broker refused %s: %s (%d refused so far)", what, reason_code,
                    self.counters["refused_by_broker"], extra={"event": "uplink"})

    def _puback(self, seq: int, reason_code: Any) -> None:
        if reason_code.is_failure:                # e.g. 0x87: the broker's ACL refused our own topic
            self._refused_by_broker(f"record {seq}", reason_code)
            self._confirmed(seq)
        elif self.cfg.ack == "broker":
            self._confirmed(seq)
        self._wake.set()

    def _confirmed(self, seq: int) -> None:
        with self._lock:
            entry = self._unconfirmed.pop(seq, None)
        if entry is not None and not entry[2]:
            took = time.monotonic() - entry[1]
            self._srtt = took if self._srtt == 0.0 else 0.875 * self._srtt + 0.125 * took
        if self.outbox.ack(seq):
            self._count("acked")
            self._acked_since_resend = True
        self._wake.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            where = up.parse_topic(msg.topic)
            if where is None or where[0] != self.device:
                raise up.UplinkMessageError(f"{msg.topic}: not this device's topic")
            kind = where[1]
            if kind == "answers":
                self._answer(up.parse_answer(msg.payload))
            elif kind == "ack":
                for msg_id in up.parse_ack(msg.payload):
                    self._cloud_ack(msg_id)
            elif kind == "req" and self.cfg.requests:
                self._request(msg)
            else:
                raise up.UplinkMessageError(f"{msg.topic}: unexpected")
        except up.UplinkMessageError as exc:
            self._count("bad_messages")
            log.warning("uplink: dropped a message: %s", exc, extra={"event": "uplink_bad_message"})
        except Exception as exc:  # noqa: BLE001 - paho's network thread runs this: an exception would end the link
            self._count("bad_messages")
            log.warning("uplink: dropped a message on %s: %s: %s", msg.topic, type(exc).__name__, first_line(exc),
                        extra={"event": "uplink_bad_message"})

    def _cloud_ack(self, msg_id: Any) -> Optional[int]:
        parsed = up.parse_id(msg_id)
        if parsed is None or parsed[0] != self.device or parsed[1] != self.outbox.epoch:
            return None
        if self.cfg.ack == "cloud":
            self._confirmed(parsed[2])
        return parsed[2]

    def _answer(self, answer: dict) -> None:
        """An answer to one of our crops or frames: once on the local bus (duplicates dropped by id)."""
        msg_id = answer["id"]
        parsed = up.parse_id(msg_id)
        if parsed is None or parsed[:2] != (self.device, self.outbox.epoch) \
                or not 1 <= parsed[2] < self.outbox.next_seq:
            raise up.UplinkMessageError(f"answer id {str(msg_id)[:80]!r}: not an id this device handed out")
        with self._lock:
            duplicate = msg_id in self._seen_answers
            self._seen_answers[msg_id] = True
            while len(self._seen_answers) > SEEN_ANSWERS:
                self._seen_answers.popitem(last=False)
            stored = self._images_stored.pop(parsed[2], None)
        self._cloud_ack(msg_id)
        if duplicate:
            self._count("duplicate_answers")
            return
        self._count("answers")
        if stored is not None:  # else stored by an earlier run, or long forgotten: unknown, left out
            answer["round_trip_ms"] = round((time.monotonic() - stored) * 1e3, 3)
            self._round_trips.append(answer["round_trip_ms"])
        self._publish_local(answer["stream"], answer)

    def _request(self, msg: Any) -> None:
        props = msg.properties
        reply_to = getattr(props, "ResponseTopic", None)
        correlation = getattr(props, "CorrelationData", None)
        problem = up.reply_topic_problem(self.device, reply_to)
        if problem:
            self._count("requests_refused")
            raise up.UplinkMessageError(problem)
        self._count("requests")

        def reply(result: Any, error: Optional[ProtocolError], request_id: Any = None) -> None:
            body = (up.reply_message(request_id, result) if error is None
                    else up.reply_message(request_id, code=error.code, message=str(error)))
            try:
                info = self.client.publish(reply_to, up.to_json(body), qos=1,
                                           properties=publish_properties(content_type=JSON_TYPE,
                                                                         correlation=correlation))
            except (ValueError, TypeError) as exc:  # never into paho's network thread: it would die
                log.warning("uplink: a reply to %s was not sent: %s", reply_to, exc, extra={"event": "uplink"})
                return
            with self._lock:
                early = self._early_puback(info.mid)
                if early is None:
                    self._replies[info.mid] = reply_to
                    while len(self._replies) > 1024:  # never acknowledged (the link went down): forgotten
                        self._replies.popitem(last=False)
            if early is not None:
                self._reply_acked(reply_to, early)

        try:
            request_id, method, params = up.parse_request(msg.payload)
        except up.UplinkMessageError as exc:
            self._count("requests_refused")
            reply(None, ProtocolError("bad_request", str(exc)), exc.request_id)
            return
        self._call(method, params, lambda result, error: reply(result, error, request_id))

    # -- status
    def _link_status(self) -> dict:
        return {"connected": self.connected.is_set(), "outbox": self.outbox.stats() if self.outbox else None,
                "counters": dict(self.counters)}

    def status(self) -> dict:
        trips = sorted(self._round_trips)
        return {"broker": self.cfg.broker, "device": self.device, "ack": self.cfg.ack, "last_error": self.last_error,
                **self._link_status(), "unconfirmed": len(self._unconfirmed),
                "confirm_ms": round(self._srtt * 1e3, 1),
                "round_trip_ms": {"p50": _quantile(trips, 0.5), "p99": _quantile(trips, 0.99)} if trips else None,
                "cpu_s": round(self.cpu_seconds(), 3)}

    def status_line(self) -> str:
        st = self.outbox.stats() if self.outbox else {"queued": 0, "bytes": 0, "dropped": 0}
        return (f"uplink {'up' if self.connected.is_set() else 'DOWN'}, outbox {st['queued']} queued "
                f"({st['bytes'] / 1024:.0f} KiB), {st['dropped']} dropped")

    def cpu_seconds(self) -> float:
        """CPU time of the uplink's threads and paho's network thread (the benchmark's cost figure)."""
        tids = list(self._tids) + [t.native_id for t in threading.enumerate()
                                   if t.name.startswith("paho-mqtt-client-") and t.native_id]
        ticks = 0
        for tid in tids:
            try:
                with open(f"/proc/self/task/{tid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])
            except (OSError, IndexError, ValueError):
                continue
        return ticks / os.sysconf("SC_CLK_TCK")


def _meta(content_type: str, user: Optional[list] = None) -> bytes:
    """What the outbox keeps beside a payload: its MQTT 5 content type and user properties."""
    return up.to_json({"ct": content_type, "up": user or []})


def _parse_meta(meta: bytes) -> dict:
    try:
        value = json.loads(meta) if meta else {}
    except ValueError:
        return {}
    return {"ct": value.get("ct"), "up": [tuple(pair) for pair in value.get("up", [])]}


def _quantile(values: list, q: float) -> float:
    return round(values[min(len(values) - 1, int(q * len(values)))], 3)
