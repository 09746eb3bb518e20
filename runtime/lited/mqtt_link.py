"""A paho-mqtt 2.x client for a broker URL: TLS, passwords, client certificates, sessions.

Shared by the device's uplink and `lited cloud`, so both speak MQTT 5 the
same way: a persistent session (clean_start off, a session expiry), automatic
reconnects with a short capped delay, and TLS checked against a CA file.
paho is imported here only, and only when an uplink or `lited cloud` runs.
"""
from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import urlsplit

SCHEMES = {"mqtt": (False, 1883), "mqtts": (True, 8883)}


class LinkError(ValueError):
    """A broker URL or credential that cannot work; the text names it."""


@dataclass
class BrokerSettings:
    url: str
    ca: Optional[str] = None             # CA file for mqtts:// (default: the system's)
    cert: Optional[str] = None           # client certificate + key (mutual TLS)
    key: Optional[str] = None
    username: Optional[str] = None
    password_file: Optional[str] = None
    keepalive: int = 30

    @property
    def address(self) -> tuple:
        """(host, port, tls) of `url`; LinkError if it is not mqtt:// or mqtts://."""
        return parse_url(self.url)


def parse_url(url: str) -> tuple:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise LinkError(f"'{url}': {exc}") from None
    if parts.scheme not in SCHEMES:
        raise LinkError(f"'{url}': expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    if not parts.hostname:
        raise LinkError(f"'{url}': no host")
    if parts.path not in ("", "/") or parts.query or parts.username or parts.password:
        raise LinkError(f"'{url}': only mqtt[s]://HOST[:PORT] (credentials go in their own fields)")
    tls, default_port = SCHEMES[parts.scheme]
    return parts.hostname, port or default_port, tls


def read_password(path: str) -> str:
    """The first line of a password file (a file, so it stays out of the config and ps)."""
    with open(path, encoding="utf-8") as fh:
        return fh.readline().rstrip("\r\n")


def make_client(settings: BrokerSettings, client_id: str, will: Optional[tuple] = None,
                manual_ack: bool = False) -> Any:
    """A configured, not yet connected paho client (MQTT 5). `will`: (topic, payload) retained QoS 1."""
    import paho.mqtt.client as mqtt

    host, port, tls = settings.address
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                         manual_ack=manual_ack)
    if tls:
        client.tls_set(ca_certs=settings.ca, certfile=settings.cert, keyfile=settings.key,
                       cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    if settings.username:
        password = read_password(settings.password_file) if settings.password_file else None
        client.username_pw_set(settings.username, password)
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    client.reconnect_delay_set(min_delay=0.2, max_delay=5)
    return client


def connect_async(client: Any, settings: BrokerSettings, session_expiry: int = 3600,
                  receive_maximum: Optional[int] = None) -> None:
    """Connect in paho's own thread (started here), retrying for ever with a
    persistent session: the broker keeps subscriptions and queued QoS 1
    messages for `session_expiry` seconds while we are away."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    host, port, _ = settings.address
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = session_expiry
    if receive_maximum:
        props.ReceiveMaximum = receive_maximum
    client.connect_async(host, port, keepalive=settings.keepalive, clean_start=False, properties=props)
    client.loop_start()


def user_properties(message: Any) -> list:
    """A received message's MQTT 5 user properties as (key, value) pairs."""
    props = getattr(message, "properties", None)
    return list(getattr(props, "UserProperty", None) or [])


def publish_properties(user: Optional[list] = None, content_type: Optional[str] = None,
                       response_topic: Optional[str] = None, correlation: Optional[bytes] = None) -> Any:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.PUBLISH)
    if user:
        props.UserProperty = list(user)
    if content_type:
        props.ContentType = content_type
    if response_topic:
        props.ResponseTopic = response_topic
    if correlation is not None:
        props.CorrelationData = correlation
    return props
