"""Where the ipc sockets live, and who may be trusted there.

Three rules, as ssh-agent and systemd keep them:
- the daemon puts its sockets only in a directory it owns that nobody else
  may write to: it creates the directory itself (`mkdir` fails if anything
  is already there, so a planted directory or link is never taken over) or
  accepts an existing one only when it is a real directory, owned by the
  daemon's user, not writable by group or others (`secure_dir`). A
  directory pre-created by another user with mode 0777 let that user
  replace `req.sock` and answer root's `lited ctl` with forged replies;
- one socket, one daemon: each ipc endpoint has a lock file beside it held
  (flock) for the daemon's life, so a second `lited serve` fails at once
  with "address in use" and never unlinks the first one's sockets
  (`lock_endpoint`);
- a client talks only to a daemon run by a user it trusts (itself, root or
  the service user `lited`): the listening process's uid comes from the
  kernel (SO_PEERCRED), and the socket's directory must be one that only a
  trusted user can change, so no one can swap the socket later
  (`PeerCheck`).

Standard library only.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pwd
import socket
import stat
import struct
from pathlib import Path
from typing import Iterable, Optional

SERVICE_USER = "lited"  # the systemd unit's User=
_PEERCRED = struct.Struct("3i")  # pid, uid, gid


class UnsafeDirectory(PermissionError):
    """A socket directory another user could change. One line."""


class AddressInUse(OSError):
    """Another live daemon holds this ipc endpoint. One line."""


class UntrustedPeer(PermissionError):
    """The daemon socket is served by (or could be swapped by) an untrusted user. One line."""


def _user(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def secure_dir(path: "str | os.PathLike", mode: int = 0o750) -> Path:
    """`path` as a directory this process's user owns and nobody else may
    write: created now (parents as needed), or checked if it exists.
    UnsafeDirectory naming the problem otherwise."""
    path = Path(path)
    created = True
    try:
        os.makedirs(path.parent, 0o755, exist_ok=True)
        os.mkdir(path, mode)  # atomic: fails on anything already there, a link included
    except FileExistsError as exc:
        if exc.filename != str(path):  # a file where a parent directory should be ("File exists: 'afile'")
            raise UnsafeDirectory(f"{path}: cannot be made: {exc.filename} is not a directory") from None
        created = False
    except NotADirectoryError:
        raise UnsafeDirectory(f"{path}: cannot be made: a part of it is not a directory") from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeDirectory(f"{path}: not a directory (a symlink or a file); refusing to put sockets "
                                  "there") from None
        raise
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise UnsafeDirectory(f"{path}: owned by {_user(st.st_uid)}, not by {_user(os.geteuid())} who runs "
                                  "lited: that user could replace its sockets; remove it or set runtime_dir")
        if created:
            os.fchmod(fd, mode)  # exact bits whatever the umask
        elif st.st_mode & 0o022:
            raise UnsafeDirectory(f"{path}: mode {stat.S_IMODE(st.st_mode):04o} lets group or others write in it "
                                  f"(they could replace its sockets); make it {mode:04o} (chmod go-w)")
        parent = os.stat(path.parent)
        if parent.st_mode & 0o002 and not parent.st_mode & stat.S_ISVTX:
            raise UnsafeDirectory(f"{path.parent}: anyone may rename {path.name} in it (world-writable, "
                                  "no sticky bit)")
    finally:
        os.close(fd)
    return path


def lock_endpoint(socket_path: "str | os.PathLike") -> int:
    """Hold `<socket>.lock` for this process's life (the fd it returns);
    AddressInUse naming the holder if another process has it."""
    lock_path = f"{socket_path}.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise AddressInUse(f"{socket_path}: address in use: another lited serve (pid {holder}) serves it "
                           f"(it holds {lock_path})") from None
    except BaseException:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:  # a full disk: no empty lock file left behind (we hold it: nobody else uses it)
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        os.close(fd)
        raise
    return fd


def trusted_uids() -> frozenset:
    """Whom a client believes: itself, root, and the service user."""
    uids = {os.getuid(), os.geteuid(), 0}
    try:
        uids.add(pwd.getpwnam(SERVICE_USER).pw_uid)
    except KeyError:
        pass
    return frozenset(uids)


def not_in_group(socket_path: str) -> PermissionError:
    """The error for a socket (or its directory) this user may not reach, saying what to do."""
    return PermissionError(f"{socket_path}: permission denied: the daemon's sockets are for its group "
                           "(`lited` for the service): add this user to it, and log in again")


def peer_uid(socket_path: str, timeout: float = 2.0) -> Optional[int]:
    """The uid of the process listening on unix socket `socket_path`, from
    the kernel (SO_PEERCRED); None when nothing listens there or takes the connection."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(socket_path)
        _, uid, _ = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
        return uid
    except (FileNotFoundError, ConnectionRefusedError, BlockingIOError, socket.timeout):
        return None  # BlockingIOError: its listen queue is full (a hung daemon); the caller's probe says so
    except PermissionError:  # "[Errno 13] Permission denied" said neither why nor what to do
        raise not_in_group(socket_path) from None
    finally:
        sock.close()


def _identity(st: os.stat_result) -> tuple:
    """What tells one socket file from another: tmpfs gives a new file the inode number of one just
    removed, so (dev, ino) alone took another user's socket, made in a directory made again, for the
    one checked (a Subscriber took 24 forged results); its owner and creation time tell them apart."""
    return st.st_dev, st.st_ino, st.st_uid, st.st_ctime_ns


class PeerCheck:
    """Checks, before a client talks, that the daemon at an ipc:// endpoint is
    one it trusts; again whenever the socket file changes (a restart)."""

    def __init__(self, endpoint: str, trusted: Optional[Iterable[int]] = None) -> None:
        self.path = endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else None
        self.endpoint = endpoint
        self.trusted = frozenset(trusted) if trusted is not None else trusted_uids()
        self._checked: Optional[tuple] = None  # the socket file last found good: _identity()

    def verify(self) -> None:
        """UntrustedPeer if the socket's directory can be changed by an
        untrusted user or its listener runs as one. Nothing to check (and no
        error) for tcp:// endpoints or while no socket exists yet."""
        if self.path is None:
            return
        try:
            st = os.lstat(self.path)
        except (FileNotFoundError, NotADirectoryError):  # no socket there (a file where its directory was)
            return
        except PermissionError:  # its directory (0750, the daemon's group) is closed to this user
            raise not_in_group(self.path) from None
        if _identity(st) == self._checked:
            return
        names = ", ".join(_user(u) for u in sorted(self.trusted)) or "nobody (trusted_uids is empty)"
        directory = os.stat(os.path.dirname(self.path) or ".")
        sticky = directory.st_mode & stat.S_ISVTX and st.st_uid in self.trusted
        if directory.st_uid not in self.trusted or (directory.st_mode & 0o022 and not sticky):
            raise UntrustedPeer(f"{self.endpoint}: its directory is owned by {_user(directory.st_uid)} with mode "
                                f"{stat.S_IMODE(directory.st_mode):04o}: someone other than {names} could have "
                                "replaced the socket; refusing to talk to it")
        uid = peer_uid(self.path)
        if uid is None:
            return  # nothing listens (yet): ZeroMQ connects once the daemon binds
        if uid not in self.trusted:
            raise UntrustedPeer(f"{self.endpoint}: served by {_user(uid)}, not by {names}; refusing to talk to it")
        self._checked = _identity(st)
