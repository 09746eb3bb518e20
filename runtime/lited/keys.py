"""CURVE key files for tcp:// endpoints: made by `lited keygen`, checked by `lited config check`.

The files are ZeroMQ's own certificate format (`zmq.auth`): NAME.key holds
the public key (give it away), NAME.key_secret the public and secret keys
(mode 0600, stays where it was made). The daemon's config names its own
secret file and a directory of the public keys of the clients it lets in.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import List, Tuple


class KeyFileError(Exception):
    """A key pair that cannot be made (it exists already, no such directory)."""


def _exists(path: Path) -> KeyFileError:
    return KeyFileError(f"{path} exists: not overwriting a key (remove it first, or pick another name)")


def make_keypair(directory: Path, name: str) -> Tuple[Path, Path]:
    """Write NAME.key and NAME.key_secret into `directory`; refuse to overwrite."""
    import zmq.auth

    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    for path in (public, secret):
        if os.path.lexists(path):  # a dangling link too: writing through it made a file where it pointed
            raise _exists(path)
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)  # its mode whatever the umask (0777 under umask 000)
    old = os.umask(0o077)  # the secret is never readable by others, not even for a moment
    try:
        made = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=directory))
        try:
            zmq.auth.create_certificates(str(made), name)
            for path, mode in ((public, 0o644), (secret, 0o600)):
                try:  # O_CREAT | O_EXCL never follows a link there (a dangling one included) nor replaces a file
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
                except FileExistsError:  # made between the look above and now
                    raise _exists(path) from None
                with os.fdopen(fd, "wb") as out:
                    os.fchmod(out.fileno(), mode)  # exact bits whatever the umask
                    out.write((made / path.name).read_bytes())
        finally:
            shutil.rmtree(made, ignore_errors=True)
    finally:
        os.umask(old)
    return public, secret


def load_key(path: str) -> Tuple[bytes, bytes]:
    """(public, secret or None) of a key file; OSError whose strerror says why not (pyzmq said
    "Invalid certificate file" of a file that is not there)."""
    import zmq.auth

    if not os.path.exists(path):
        raise OSError(2, "missing (a key file of lited keygen)")
    if not os.path.isfile(path):
        raise OSError(21, "not a file (a key file of lited keygen)")
    return zmq.auth.load_certificate(path)


def curve_problems(server_secret: str, clients_dir: str) -> List[str]:
    """What keeps the `curve` section of a config from working, by field: what `lited config
    check` says and what the daemon refuses to start with (one check, so a check that passes
    is a start that does)."""
    problems = []
    try:
        _, secret = load_key(server_secret)
        if not secret:
            problems.append(f"curve.server_secret: {server_secret} holds no secret key (the NAME.key_secret file)")
        elif os.stat(server_secret).st_mode & 0o007:  # 0640 for the service's group is fine; others never
            mode = os.stat(server_secret).st_mode & 0o777
            problems.append(f"curve.server_secret: {server_secret}: mode {mode:04o}, "
                            "readable or writable by others: a key anyone may read is no key (chmod 600, or 640 "
                            "with the daemon's group)")
    except (OSError, ValueError) as exc:
        problems.append(f"curve.server_secret: {server_secret}: {getattr(exc, 'strerror', None) or exc}")
    if not os.path.isdir(clients_dir):
        problems.append(f"curve.clients_dir: {clients_dir}: not a directory")
        return problems
    keys = sorted(name for name in os.listdir(clients_dir) if name.endswith(".key"))
    if not keys:
        problems.append(f"curve.clients_dir: {clients_dir}: no client public keys (*.key): no client could connect")
    for name in keys:  # the daemon loads every one: a bad one stopped its start (with no field named)
        try:
            public, _ = load_key(os.path.join(clients_dir, name))
        except (OSError, ValueError) as exc:
            public, why = None, getattr(exc, "strerror", None) or exc
        else:
            why = "no public key in it"
        if not public:
            problems.append(f"curve.clients_dir: {name}: {why} (a client's NAME.key from lited keygen)")
    return problems
