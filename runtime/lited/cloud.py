"""`lited cloud` and `lited remote`: the server side of the uplink (docs/uplink.md).

A cloud worker takes the crops, frames, results and events of many devices
from an MQTT 5 shared subscription (`$share/<group>/lited/+/...`), so
starting more workers in the same group spreads the load; it runs a second
model on each crop or frame (any engine lited has) and publishes the answer
to the device, which republishes it on its local bus.

Rules it keeps:
- every message is acknowledged end to end: a crop or frame by its answer, a
  result or event by an `ack` message (batched), so a device configured with
  `ack: cloud` keeps a record until the server really has it;
- duplicates (a device re-sends what was not acknowledged in time) are
  dropped by message id: a result or event is recorded once, a crop runs the
  model once and a duplicate gets the cached answer again (its first answer
  may be what was lost);
- incoming messages are acknowledged to the broker (PUBACK) only after they
  were handled, and at most `receive_maximum` wait at a time;
- one model, used from one thread (the worker's).
"""
from __future__ import annotations

import collections
import json
import logging
import os
import queue
import socket
import threading
import time
from typing import Any, Callable, Optional, TextIO

from lited import uplink_protocol as up
from lited.errors import first_line
from lited.imageheader import ImageTooLarge, decode_bounded
from lited.mqtt_link import (REFUSED, BrokerSettings, ConnectWatch, connect_async, make_client, publish_properties,
                             user_properties)

log = logging.getLogger("lited.cloud")
ANSWER_CACHE = 4096
ACK_BATCH = 64
# what `stats()` (printed on SIGTERM) always has, zeros included: scripts read them by name
STAT_COUNTERS = ("received", "answered", "results", "events", "crops", "frames", "status", "failed", "bad")
RECEIVE_MAXIMUM = 64


class Deduper:
    """Has this id been seen? Per device and outbox epoch, a floor below which
    everything was seen plus the ids above it; when gaps (records a device
    dropped from a full outbox) leave more than `window` ids above the floor,
    the floor moves up past the oldest gap, so memory stays bounded."""

    def __init__(self, window: int = 100_000, epochs: int = 4) -> None:
        self.window = window
        self.epochs = epochs
        self._floors: collections.OrderedDict = collections.OrderedDict()   # (device, epoch) -> floor
        self._above: dict = {}
        self.duplicates = 0

    def first_time(self, device: str, epoch: str, seq: int) -> bool:
        key = (device, epoch)
        if key not in self._floors:
            self._floors[key] = 0
            self._above[key] = set()
            stale = [k for k in self._floors if k[0] == device][:-self.epochs]
            for k in stale:
                self._floors.pop(k)
                self._above.pop(k)
        floor, above = self._floors[key], self._above[key]
        if seq <= floor or seq in above:
            self.duplicates += 1
            return False
        above.add(seq)
        while floor + 1 in above:
            floor += 1
            above.discard(floor)
        if len(above) > self.window:
            floor = min(above)
            above.difference_update([s for s in above if s <= floor])
            while floor + 1 in above:
                floor += 1
                above.discard(floor)
        self._floors[key] = floor
        return True


class CloudWorker:
    """`lited cloud`: one worker of a shared subscription, answering the devices' crops."""
    def __init__(self, settings: BrokerSettings, model_factory: Optional[Callable[[], Any]] = None,
                 group: str = "lited", client_id: Optional[str] = None, record: Optional[TextIO] = None,
                 session_expiry: int = 600) -> None:
        self.settings = settings
        self.model_factory = model_factory
        self.group = group
        self.client_id = client_id or f"lited-cloud-{socket.gethostname()}-{os.getpid()}"
        self.session_expiry = session_expiry if client_id else 0
        self.record = record
        self.dedup = Deduper()
        self.counters = collections.Counter()
        self.connected = threading.Event()
        self.ready = threading.Event()            # the model is loaded
        self._queue: queue.Queue = queue.Queue()  # bounded by the broker: RECEIVE_MAXIMUM unacknowledged
        self._answers: collections.OrderedDict = collections.OrderedDict()   # id -> (topic, payload)
        self._acks: dict = collections.defaultdict(list)                      # device -> [ids]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="cloud-worker", daemon=True)
        self.error: Optional[BaseException] = None
        self.client: Any = None
        self.started = time.monotonic()

    def topics(self) -> list:
        shared = [(f"$share/{self.group}/{up.ROOT}/+/{kind}/+", 1) for kind in up.DEVICE_KINDS]
        return shared + [(f"{up.ROOT}/+/status", 1)]

    def start(self, timeout: float = 120.0) -> None:
        """Load the model, then connect and subscribe."""
        self._thread.start()
        if not self.ready.wait(timeout) or self.error is not None:
            raise self.error or TimeoutError(f"the model was not ready in {timeout} s")
        self.client = make_client(self.settings, self.client_id, manual_ack=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self._watch = ConnectWatch(self.client, self._connect_trouble)
        connect_async(self.client, self.settings, self.session_expiry, receive_maximum=RECEIVE_MAXIMUM)

    def stop(self) -> None:
        """Finish what was received, then leave: a DISCONNECT with session
        expiry 0, so the broker deletes this worker's session and stops giving
        it a share of the group (a stopped member would hold its share)."""
        self._stop.set()
        self._thread.join(10)
        if self.client is not None:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.DISCONNECT)
            props.SessionExpiryInterval = 0
            self.client.disconnect(properties=props)
            self.client.loop_stop()

    def stats(self) -> dict:
        took = time.monotonic() - self.started
        return {"client_id": self.client_id, "uptime_s": round(took, 1),
                **{name: self.counters[name] for name in STAT_COUNTERS}, "duplicates": self.dedup.duplicates}

    # -- paho's thread
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:  # said once, as uplink.md says (it was at every retry, worded apart)
            self._watch.refused(f"{REFUSED}: {reason_code}")
            return
        client.subscribe(self.topics())    # again on every connect: a restarted broker may have lost the session
        self._watch.connected()
        self.connected.set()
        log.info("cloud: %s connected to %s, group %s", self.client_id, self.settings.url, self.group)

    def _connect_trouble(self, reason: str) -> None:
        """A new reason for not being connected: logged once, not at every retry."""
        if reason and not self._stop.is_set():
            log.warning("cloud: %s: %s; retrying", self.settings.url, reason)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: list, properties: Any) -> None:
        refused = [str(rc) for rc in reason_codes if rc.is_failure]
        if refused:
            log.error("cloud: subscriptions refused: %s", ", ".join(refused))
        else:
            log.info("cloud: %s subscribed to %d topics", self.client_id, len(reason_codes))

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self._queue.put(msg)

    # -- the worker thread: the model and everything it answers
    def _work(self) -> None:
        try:
            self.model = self.model_factory() if self.model_factory else None
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        while not self._stop.is_set():
            try:
                msg = self._queue.get(timeout=0.05)
            except queue.Empty:
                self._flush_acks()
                continue
            self._take(msg)
        for _ in range(self._queue.qsize()):    # what had arrived when asked to stop
            self._take(self._queue.get())
        self._flush_acks()
        if self.model is not None:
            self.model.close()

    def _take(self, msg: Any) -> None:
        try:
            self._handle(msg)
        except up.UplinkMessageError as exc:
            self.counters["bad"] += 1
            log.warning("cloud: dropped %s: %s", msg.topic, exc)
        except Exception as exc:  # noqa: BLE001 - one device's message must not end the worker
            self.counters["bad"] += 1
            log.warning("cloud: dropped %s: %s: %s", msg.topic, type(exc).__name__, first_line(exc))
        self.client.ack(msg.mid, msg.qos)        # PUBACK only now: a worker that dies leaves it to the broker
        if sum(len(v) for v in self._acks.values()) >= ACK_BATCH:
            self._flush_acks()

    def _handle(self, msg: Any) -> None:
        where = up.parse_topic(msg.topic)
        if where is None:
            raise up.UplinkMessageError(f"{msg.topic}: not a lited topic")
        device, kind, stream = where
        if kind == "status":
            if not msg.payload:  # a retained status cleared: nothing to record
                return
            message = up.from_json(msg.payload, "status")  # junk was recorded as null, not counted as bad
            self.counters["status"] += 1
            self._record({"kind": "status", "device": device, "message": message})
            return
        msg_id = dict(user_properties(msg)).get(up.ID_PROPERTY)
        parsed = up.parse_id(msg_id)
        if parsed is None or parsed[0] != device:
            raise up.UplinkMessageError(f"{msg.topic}: no valid {up.ID_PROPERTY} for device {device}")
        first = self.dedup.first_time(*parsed)
        self.counters["received"] += 1
        if kind in up.IMAGE_KINDS:
            self._answer_image(msg, device, msg_id, first)
            return
        if first:
            try:
                message = up.parse_device_message(msg.payload, kind[:-1])
            except up.UplinkMessageError:  # counted in `bad` only (it was in `results` too); acknowledged,
                self._acks[device].append(msg_id)  # or the device sends it again for ever
                raise
            self.counters[kind] += 1
            self._record({"kind": kind[:-1], "device": device, "id": msg_id, "message": message})
        self._acks[device].append(msg_id)

    def _answer_image(self, msg: Any, device: str, msg_id: str, first: bool) -> None:
        cached = self._answers.get(msg_id)
        if not first and cached is not None:     # its answer may be what was lost: send it again
            self.client.publish(*cached, qos=1)
            return
        image_meta = up.parse_image_properties(user_properties(msg))
        try:  # its header read before it is decoded: a 631-byte JPEG saying 30000x30000 took 5.4 GB
            image, too_large = decode_bounded(msg.payload), None
        except ImageTooLarge as exc:
            image, too_large = None, str(exc)
        model = self.model
        model_info = {"name": model.name, "version": model.version, "task": model.task} if model else None
        if too_large:
            answer = up.answer_message(msg_id, image_meta, self.client_id, model_info, None, too_large)
        elif image is None:
            answer = up.answer_message(msg_id, image_meta, self.client_id, model_info, None, "not a JPEG image")
        elif model is None:
            answer = up.answer_message(msg_id, image_meta, self.client_id, None,
                                       {"detections": [], "classes": [], "timings_ms": {}})
        else:
            try:
                answer = up.answer_message(msg_id, image_meta, self.client_id, model_info, model.infer(image))
            except Exception as exc:  # noqa: BLE001 - one bad crop must not stop the worker
                self.counters["failed"] += 1
                answer = up.answer_message(msg_id, image_meta, self.client_id, model_info, None, first_line(exc))
        topic = up.topic(device, "answers", image_meta["stream"])
        payload = up.to_json(answer)
        self._answers[msg_id] = (topic, payload)
        while len(self._answers) > ANSWER_CACHE:
            self._answers.popitem(last=False)
        self.client.publish(topic, payload, qos=1)
        self.counters["answered"] += 1
        if first:
            self.counters["crops" if image_meta["detection"] is not None else "frames"] += 1
            self._record({"kind": "crop" if image_meta["detection"] is not None else "frame", "device": device,
                          "id": msg_id, "image": image_meta, "bytes": len(msg.payload), "answer": answer})

    def _flush_acks(self) -> None:
        for device, ids in self._acks.items():
            if ids:
                self.client.publish(up.topic(device, "ack"), up.to_json(up.ack_message(ids)), qos=1)
        self._acks.clear()

    def _record(self, entry: dict) -> None:
        if self.record is not None:
            self.record.write(json.dumps({"ts": time.time(), "worker": self.client_id, **entry}) + "\n")
            self.record.flush()


def remote_call(settings: BrokerSettings, device: str, method: str, params: Optional[dict] = None,
                timeout: float = 30.0) -> dict:
    """Send a request to `device` over MQTT and wait for its reply (the reply map of docs/uplink.md)."""
    client_id = f"lited-remote-{socket.gethostname()}-{os.getpid()}"
    reply_topic = f"{up.topic(device, 'resp')}/{client_id}"
    correlation = os.urandom(8)
    subscribed, replied = threading.Event(), threading.Event()
    out: dict = {}

    def on_connect(client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:  # said at once, in uplink.md's words (it was "connection refused: ...")
            out["refused"] = f"{REFUSED}: {reason_code}"
            replied.set()
        else:
            client.subscribe(reply_topic, qos=1)

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        if getattr(msg.properties, "CorrelationData", None) == correlation:
            out["reply"] = msg.payload
            replied.set()

    def on_publish(client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        # the broker's word on the request (MQTT 5 PUBACK): refused by its ACL, or nobody to take it,
        # said at once; it was "no reply" after the whole timeout
        if reason_code.is_failure:
            out["error"] = f"the broker refused the request: {reason_code}"
        elif reason_code.value == 0x10:  # No matching subscribers: no session of the device takes requests
            out["error"] = (f"no device takes requests on {up.topic(device, 'req')} (the broker has no subscriber "
                            "there: the device never connected, or has `requests: false`)")
        if "error" in out:
            replied.set()

    client = make_client(settings, client_id)
    client.on_connect = on_connect
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = on_message
    client.on_publish = on_publish
    watch = ConnectWatch(client, lambda reason: None)
    connect_async(client, settings, session_expiry=0)
    try:
        if not subscribed.wait(timeout) and not replied.is_set():
            why = f": {watch.reason}" if watch.reason else ""
            raise TimeoutError(f"lited: no connection to {settings.url} within {timeout:.0f} s{why}")
        if not out:
            props = publish_properties(content_type="application/json", response_topic=reply_topic,
                                       correlation=correlation)
            client.publish(up.topic(device, "req"), up.to_json(up.request_message(method, params, 1)), qos=1,
                           properties=props)
        if not replied.wait(timeout):
            raise TimeoutError(f"lited: no reply from {device} to {method} within {timeout:.0f} s")
    finally:
        client.disconnect()
        client.loop_stop()
    if "refused" in out:
        raise ConnectionError(f"lited: no connection to {settings.url} within {timeout:.0f} s: {out['refused']}")
    if "error" in out:
        raise ConnectionError(f"lited: {settings.url}: {out['error']}")
    return up.from_json(out["reply"], "reply", limit=64 << 20)
