"""A paho-mqtt 2.x client for a broker URL: TLS, passwords, client certificates, sessions.

Shared by the device's uplink and `lited cloud`, so both speak MQTT 5 the
same way: a persistent session (clean_start off, a session expiry), automatic
reconnects with a short capped delay, and TLS checked against a CA file.
paho is imported here only, and only when an uplink or `lited cloud` runs.
"""
from __future__ import annotations

import errno
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from lited.files import FileRefused, open_regular

SCHEMES = {"mqtt": (False, 1883), "mqtts": (True, 8883)}


class LinkError(ValueError):
    """A broker URL or credential that cannot work; the text names it
    (`field`: the field or option at fault, when there is one; `detail`: the
    text after it)."""

    def __init__(self, text: str, field: Optional[str] = None) -> None:
        super().__init__(f"{field}: {text}" if field else text)
        self.field, self.detail = field, text


@dataclass
class BrokerSettings:
    url: str
    ca: Optional[str] = None             # CA file for mqtts:// (default: the system's)
    cert: Optional[str] = None           # client certificate + key (mutual TLS)
    key: Optional[str] = None
    username: Optional[str] = None
    password_file: Optional[str] = None
    keepalive: int = 30
    names: dict = field(default_factory=dict)  # how the user named each field ("uplink.ca", "--ca"), for errors

    @property
    def address(self) -> tuple:
        """(host, port, tls) of `url`; LinkError if it is not mqtt:// or mqtts://."""
        return parse_url(self.url)

    def name(self, key: str) -> str:
        return self.names.get(key, key)

    def check(self) -> None:
        """What can be known before connecting: the URL, the password file,
        and for mqtts:// the CA, certificate and key read as TLS will read
        them. LinkError naming the field and file."""
        _, _, tls = self.address
        if self.password_file:
            _regular(self.password_file, self.name("password_file"))
            try:
                empty = not read_password(self.password_file)
            except (OSError, UnicodeDecodeError) as exc:
                raise LinkError(f"{self.password_file}: {getattr(exc, 'strerror', None) or exc}",
                                self.name("password_file")) from None
            if empty:  # taken, then "Not authorized" at every connect
                raise LinkError(f"{self.password_file}: its first line is empty (the MQTT password goes there)",
                                self.name("password_file"))
        if tls:
            tls_context(self)


def file_problem(path: str) -> Optional[str]:
    """Why `path` cannot be read as a credential file ('no such file', 'not a
    regular file (a directory)', 'Permission denied'), None if it can."""
    try:
        open_regular(path).close()
    except FileNotFoundError:
        return "no such file"
    except FileRefused as exc:
        return exc.reason
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _regular(path: str, name: str) -> None:
    problem = file_problem(path)
    if problem:
        raise LinkError(f"{path}: {problem}", name)


def tls_context(settings: BrokerSettings) -> ssl.SSLContext:
    """The client's TLS context: the broker's certificate checked against
    `ca` (else the system's CAs) and its name against the URL's host, and the
    client certificate if any. LinkError naming the field and file when one
    cannot be used (OpenSSL's own words would name neither)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, host names checked
    if settings.ca:
        _regular(settings.ca, settings.name("ca"))
        try:
            ctx.load_verify_locations(cafile=settings.ca)
        except (ssl.SSLError, OSError) as exc:
            raise LinkError(f"{settings.ca}: no PEM certificate in it ({_ssl_words(exc)})",
                            settings.name("ca")) from None
    else:
        ctx.load_default_certs()
    if settings.cert or settings.key:
        if not (settings.cert and settings.key):
            missing = "key" if settings.cert else "cert"
            raise LinkError(f"needed with {settings.name('cert' if settings.cert else 'key')} (a client "
                            "certificate and its key go together)", settings.name(missing))
        _regular(settings.cert, settings.name("cert"))
        _regular(settings.key, settings.name("key"))
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=settings.cert)
        except (ssl.SSLError, OSError) as exc:
            raise LinkError(f"{settings.cert}: no PEM certificate in it ({_ssl_words(exc)})",
                            settings.name("cert")) from None
        try:
            ctx.load_cert_chain(settings.cert, settings.key)
        except (ssl.SSLError, OSError) as exc:
            why = ("not the key of that certificate" if getattr(exc, "reason", "") == "KEY_VALUES_MISMATCH"
                   else f"not a PEM private key without a passphrase ({_ssl_words(exc)})")
            raise LinkError(f"{settings.key}: {why} ({settings.name('cert')} {settings.cert})",
                            settings.name("key")) from None
    return ctx


# OpenSSL's X509_V_ERR_CERT_NOT_YET_VALID and X509_V_ERR_CERT_HAS_EXPIRED
CERT_NOT_YET_VALID, CERT_HAS_EXPIRED = 9, 10


def _ssl_words(exc: "BaseException | str") -> str:
    """OpenSSL's reason without its source location: 'no certificate or crl found'."""
    text = str(exc)
    return text.split("] ", 1)[-1].split(" (_ssl.c", 1)[0]


def _handshake_refused(words: str) -> str:
    return f"TLS: the broker refused the handshake: {words} (check cert and key, and the broker's log)"


def connect_problem(exc: BaseException) -> str:
    """One line for why a connection attempt failed (paho retries and keeps
    the exception to itself): what a user checks first."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in (CERT_NOT_YET_VALID, CERT_HAS_EXPIRED):  # a board without an RTC, before NTP
            return (f"TLS: the broker's certificate was refused: {_ssl_words(exc)} (this device's date is "
                    f"{time.strftime('%Y-%m-%d', time.gmtime())} UTC: check its clock and NTP, then the "
                    "certificate's dates)")
        return f"TLS: the broker's certificate was refused: {_ssl_words(exc)} (check ca and the URL's host)"
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, BrokenPipeError)):
        return "the broker closed the connection during the handshake (an mqtt:// port given as mqtts://?)"
    if isinstance(exc, ssl.SSLError):
        words = _ssl_words(exc)
        if getattr(exc, "reason", "") in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
            return f"TLS: {words} (an mqtt:// port given as mqtts://?)"
        return _handshake_refused(words) if "alert" in words else f"TLS: {words}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host: {exc.strerror}"
    if isinstance(exc, OSError) and exc.errno:
        return f"{os.strerror(exc.errno)} ({errno.errorcode.get(exc.errno, exc.errno)})"
    return str(exc) or type(exc).__name__


REFUSED = "the broker refused the connection"  # a CONNACK's failure, before its reason code


class ConnectWatch:
    """The last reason paho's thread failed to connect or lost the connection,
    and a callback when it changes. paho catches the error in its loop and
    calls `on_connect_fail` or `on_disconnect` without it ("Unspecified
    error"); wrapping the client's `reconnect` (which that loop calls) keeps a
    failed connect's exception, and its error log line a failed read's (a
    TLS 1.3 broker refuses a client certificate after the handshake)."""

    READ_FAILED = "failed to receive on socket: "

    def __init__(self, client: Any, changed: Callable[[str], None]) -> None:
        from paho.mqtt.client import MQTT_LOG_ERR

        self._error_level = MQTT_LOG_ERR  # on_log sees every packet's debug line: compare, nothing more
        self.reason = ""
        self._changed = changed
        self._lock = threading.Lock()
        self._reconnect = client.reconnect
        client.reconnect = self._attempt
        client.on_log = self._log

    def _log(self, client: Any, userdata: Any, level: int, text: str) -> None:
        if level == self._error_level and text.startswith(self.READ_FAILED):
            words = _ssl_words(text[len(self.READ_FAILED):])
            self._set(_handshake_refused(words) if "alert" in words else words)

    def _attempt(self) -> Any:
        try:
            result = self._reconnect()
        except OSError as exc:
            self._set(connect_problem(exc))
            raise
        return result

    def connected(self) -> None:
        """Connected: the next failure is news again."""
        self._set("", notify=False)

    def refused(self, reason: str) -> None:
        """The broker answered and refused us (CONNACK): a reason like a failed connect's."""
        self._set(reason)

    def _set(self, reason: str, notify: bool = True) -> None:
        with self._lock:
            news, self.reason = reason != self.reason, reason
        if news and notify:
            self._changed(reason)


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
    if port == 0:  # it meant the default port, in silence
        raise LinkError(f"'{url}': port 0: expected 1 to 65535 (or none: 1883 for mqtt://, 8883 for mqtts://)")
    tls, default_port = SCHEMES[parts.scheme]
    return parts.hostname, port or default_port, tls


def read_password(path: str) -> str:
    """The first line of a password file (a file, so it stays out of the config and ps)."""
    with open(path, encoding="utf-8") as fh:
        return fh.readline().rstrip("\r\n")


def make_client(settings: BrokerSettings, client_id: str, will: Optional[tuple] = None,
                manual_ack: bool = False) -> Any:
    """A configured, not yet connected paho client (MQTT 5). `will`: (topic, a function giving the
    payload), retained QoS 1, its payload made afresh before each connect (a will's `ts` said the first
    connect's time after every reconnect)."""
    import paho.mqtt.client as mqtt

    host, port, tls = settings.address
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                         manual_ack=manual_ack)
    if tls:
        client.tls_set_context(tls_context(settings))
    if settings.username:
        password = read_password(settings.password_file) if settings.password_file else None
        client.username_pw_set(settings.username, password)
    if will is not None:
        attempt = client.reconnect  # what paho's loop calls for each try, the first too

        def reconnect() -> Any:
            client.will_set(will[0], will[1](), qos=1, retain=True)
            return attempt()
        client.reconnect = reconnect
    client.reconnect_delay_set(min_delay=0.2, max_delay=5)
    return client


def connect_async(client: Any, settings: BrokerSettings, session_expiry: int = 3600,
                  receive_maximum: Optional[int] = None, max_packet: Optional[int] = None) -> None:
    """Connect in paho's own thread (started here), retrying for ever with a
    persistent session: the broker keeps subscriptions and queued QoS 1
    messages for `session_expiry` seconds while we are away. `max_packet`:
    the largest packet we take (the broker drops larger ones for us)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    host, port, _ = settings.address
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = session_expiry
    if receive_maximum:
        props.ReceiveMaximum = receive_maximum
    if max_packet:
        props.MaximumPacketSize = max_packet
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
