#!/usr/bin/env python3
"""The Python half of tools/install_sdk.sh: what is awkward or unsafe in sh.

    sdk_unpack.py check  SRC [--unpack-to DIR]
                                        SRC is safe to unpack? prints NAME VERSION FILES MB MANIFEST_SHA256 GOLDEN;
                                        with DIR (new, scratch), also unpacks it there and loads it as the
                                        daemon would (every manifest problem, the golden image, this
                                        machine's target and model checksums)
    sdk_unpack.py unpack SRC DEST       check again, then copy the bundle's files into the empty DEST
    sdk_unpack.py differs SRC DIR       prints how SRC's files differ from the installed DIR's (the first
                                        difference, e.g. `a different cls_labels.txt`), nothing when the same
    sdk_unpack.py config CONF MODEL PATH [--dry-run] [--named BOARD_PATH]
                                        make sure the daemon config names MODEL; prints STATE STREAMS MESSAGE
                                        (a new config's header names it as BOARD_PATH: --prefix)
                                        (STATE created/added/present/other, STREAMS: how many streams use MODEL)
    sdk_unpack.py wait --config CONF --runtime-dir DIR --model M --version V --since TS [--timeout S] [--reloaded]
                                        until the running daemon serves M at V (V '-': M is gone)

SRC is an SDK zip (tools/build_sdk.py: one top folder `<name>/`, or the
files at the top) or a bundle directory. Before a byte is written it is
refused, with one line naming the entry, if any entry is absolute, has a
`..` (or empty) component or a backslash, is a symlink, hard link, device,
fifo or socket, is encrypted or duplicated, or if the entries pass the
limits below. Files are written 0644 and directories 0755 whatever the zip
says (the daemon's user must read them; nothing in a bundle is executable).

check (without --unpack-to), unpack and differs need only the standard library and lited.validate
(itself standard library only: install_sdk.sh puts the checkout's runtime/ on
PYTHONPATH), so a bundle is checked before the runtime is installed;
`check --unpack-to` (lited.bundle: the engines' registry needs numpy), `config` (YAML)
and `wait` (lited.client) run with the runtime's venv Python.
Exit status: 0 ok, 1 refused or failed, 3 (wait) timed out.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import stat
import struct
import sys
import time
import zipfile
import zlib
from pathlib import Path

from lited.bundle import TARGET_MACHINES, file_specs, spec_engines
from lited.validate import name_problem, version_problem

MAX_BYTES = 2 << 30  # uncompressed, all entries together
MAX_FILES = 10000  # entries, directories included
MAX_DIRECTORY = 16 << 20  # bytes of the zip's central directory (10000 entries with long names)
MAX_MANIFEST = 1 << 20
EOCD = struct.Struct("<4s4H2LH")  # end of central directory: sig, disk, cd disk, entries here, entries, size, offset, comment
ZIP64_LOCATOR = struct.Struct("<4sLQL")  # sig, disk, offset of the zip64 end record, disks
ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")  # sig, size, versions, disks, entries here, entries, size, offset
SETTLE = 15  # seconds to wait for a reload's record when the version served does not change
CHUNK = 1 << 20


class Refused(Exception):
    """SRC is unsafe or not a bundle; the message names the entry."""


# --- reading the source: a zip or a directory, as (relative name, size, opener) ---

def _check_name(name: str) -> list:
    """The components of an entry name, or Refused naming why not."""
    if "\0" in name or any(ord(c) < 32 for c in name):
        raise Refused(f"entry {name!r}: control character in name")
    if "\\" in name:
        raise Refused(f"entry {name!r}: backslash in name")
    if name.startswith("/"):
        raise Refused(f"entry {name!r}: absolute path")
    parts = name.rstrip("/").split("/")
    if ".." in parts:
        raise Refused(f"entry {name!r}: '..' leaves the bundle")
    if any(p in ("", ".") for p in parts):
        raise Refused(f"entry {name!r}: empty or '.' path component")
    return parts


class _Limits:
    def __init__(self) -> None:
        self.files = 0
        self.bytes = 0

    def add(self, name: str, size: int) -> None:
        self.files += 1
        self.bytes += size
        if self.files > MAX_FILES:
            raise Refused(f"entry {name!r}: more than {MAX_FILES} entries")
        if self.bytes > MAX_BYTES:
            raise Refused(f"entry {name!r}: uncompressed size passes {MAX_BYTES >> 20} MiB")


def _zip_entries(zf: zipfile.ZipFile) -> tuple:
    """(files {relative name: ZipInfo}, dirs, limits), the top folder stripped."""
    seen, files, dirs, limits = set(), {}, set(), _Limits()
    for info in zf.infolist():
        name = info.filename
        parts = _check_name(name)
        if name in seen:
            raise Refused(f"entry {name!r}: duplicate entry")
        seen.add(name)
        if info.flag_bits & 0x1:
            raise Refused(f"entry {name!r}: encrypted")
        mode = info.external_attr >> 16 if info.create_system == 3 else 0
        kind = stat.S_IFMT(mode)
        is_dir = name.endswith("/") or kind == stat.S_IFDIR
        if stat.S_ISLNK(mode):
            raise Refused(f"entry {name!r}: symlink")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise Refused(f"entry {name!r}: not a regular file (device, fifo or socket)")
        limits.add(name, 0 if is_dir else info.file_size)
        if is_dir:
            dirs.add("/".join(parts))
        else:
            files["/".join(parts)] = info
    top = _top_folder(files)
    return ({n[len(top):]: i for n, i in files.items()},
            {d[len(top):] for d in dirs if d.startswith(top) and d != top.rstrip("/")}, limits)


def _top_folder(files: dict) -> str:
    """'' when manifest.json is at the top, 'name/' when everything is in one folder holding it."""
    if "manifest.json" in files:
        return ""
    tops = {n.split("/", 1)[0] for n in files}
    if len(tops) == 1 and f"{next(iter(tops))}/manifest.json" in files:
        return f"{next(iter(tops))}/"
    raise Refused("no manifest.json at the top or in a single top folder")


def _dir_entries(root: Path) -> tuple:
    """(files {relative name: path}, dirs, limits) of a bundle directory, refusing links and specials."""
    files, dirs, limits = {}, set(), _Limits()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames) + sorted(filenames):
            full = Path(dirpath, name)
            rel = full.relative_to(root).as_posix()
            st = full.lstat()
            if stat.S_ISLNK(st.st_mode):
                raise Refused(f"entry {rel!r}: symlink")
            if stat.S_ISDIR(st.st_mode):
                dirs.add(rel)
                limits.add(rel, 0)
            elif stat.S_ISREG(st.st_mode):
                if st.st_nlink > 1:
                    raise Refused(f"entry {rel!r}: hard link")
                files[rel] = full
                limits.add(rel, st.st_size)
            else:
                raise Refused(f"entry {rel!r}: not a regular file (device, fifo or socket)")
    if "manifest.json" not in files:
        raise Refused("no manifest.json at the top")
    return files, dirs, limits


def _zip_directory(path: Path) -> tuple:
    """(entries, central directory bytes) as the zip's end records declare
    them, read from its last 64 KiB: checked before `zipfile` reads the
    directory, which it does whole (1M entries took 529 MB and 18.6 s).
    (0, 0) when there is no end record (then `zipfile` refuses the file)."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        tail_at = max(0, size - (EOCD.size + 0xFFFF))
        fh.seek(tail_at)
        tail = fh.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < EOCD.size:
            return 0, 0
        _, _, _, _, entries, cd_size, _, _ = EOCD.unpack_from(tail, at)
        if entries == 0xFFFF or cd_size == 0xFFFFFFFF:  # zip64: the real counts are in its own end record
            loc_at = tail_at + at - ZIP64_LOCATOR.size
            if loc_at < 0:
                return entries, cd_size
            fh.seek(loc_at)
            sig, _, record_at, _ = ZIP64_LOCATOR.unpack(fh.read(ZIP64_LOCATOR.size))
            if sig == b"PK\x06\x07" and record_at + ZIP64_EOCD.size <= size:
                fh.seek(record_at)
                record = ZIP64_EOCD.unpack(fh.read(ZIP64_EOCD.size))
                if record[0] == b"PK\x06\x06":
                    entries, cd_size = record[7], record[8]
    return entries, cd_size


class Source:
    """A checked bundle source; `open(name)` gives a file's bytes as a stream."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.zip = None
        if self.path.is_dir():
            self.files, self.dirs, self.limits = _dir_entries(self.path)
        elif self.path.is_file():
            try:
                entries, directory = _zip_directory(self.path)
            except OSError as exc:
                raise Refused(f"not a zip file or bundle directory ({exc})") from None
            if entries > MAX_FILES:
                raise Refused(f"more than {MAX_FILES} entries (its directory lists {entries}); not reading them")
            if directory > MAX_DIRECTORY:
                raise Refused(f"its directory is {directory} bytes, over {MAX_DIRECTORY >> 20} MiB; not reading it")
            try:
                self.zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise Refused(f"not a zip file or bundle directory ({exc})") from None
            self.files, self.dirs, self.limits = _zip_entries(self.zip)
        else:
            raise Refused("no such file or directory")

    def open(self, name: str):
        if self.zip is not None:
            return self.zip.open(self.files[name])
        # O_NOFOLLOW and a second look: the directory may change under us.
        fd = os.open(self.files[name], os.O_RDONLY | os.O_NOFOLLOW)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
            os.close(fd)
            raise Refused(f"entry {name!r}: changed while reading (now not a plain file)")
        return os.fdopen(fd, "rb")

    def manifest(self) -> tuple:
        """(manifest dict, raw bytes); name and version checked as directory names."""
        with self.open("manifest.json") as fh:
            raw = fh.read(MAX_MANIFEST + 1)
        if len(raw) > MAX_MANIFEST:
            raise Refused(f"entry 'manifest.json': over {MAX_MANIFEST >> 10} KiB")
        try:
            manifest = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise Refused(f"entry 'manifest.json': not valid JSON ({exc})") from None
        if not isinstance(manifest, dict):
            raise Refused("entry 'manifest.json': not a JSON object")
        # the daemon's and the builder's rules: both become directory names here
        for key, check in (("name", name_problem), ("version", version_problem)):
            problem = check(manifest.get(key))
            if problem:
                raise Refused(f"entry 'manifest.json': {key} {problem}")
        return manifest, raw


def cmd_check(args: argparse.Namespace) -> int:
    src = Source(args.src)
    manifest, raw = src.manifest()
    if args.unpack_to:
        from lited.bundle import BundleError, load_bundle

        dest = Path(args.unpack_to)
        dest.mkdir(0o700)
        unpack(src, dest)
        try:  # and what would run it here: an engine of it installed for each stage (the self-test needs one)
            load_bundle(dest).choose_all(check_file=False)
        except BundleError as exc:
            raise Refused("; ".join(exc.problems)) from None
    print(manifest["name"], manifest["version"], len(src.files), f"{src.limits.bytes / 1e6:.1f}",
          hashlib.sha256(raw).hexdigest(), "golden" if manifest.get("golden") else "-",
          ",".join(engines_listed(manifest)) or "-")
    return 0


def engines_listed(manifest: dict) -> list:
    """The engines the files of this machine's targets name (its stages' too), in the bundle's
    order: the installer refuses, before pip, a runtime none of them would be in (the runtime
    validates the bundle later: a malformed entry is left to it)."""
    found: dict = {}
    for part in [manifest, *(s for s in manifest.get("stages") or () if isinstance(s, dict))]:
        models = part.get("models")
        for target, spec in models.items() if isinstance(models, dict) else ():
            if platform.machine() not in TARGET_MACHINES.get(target, ()):
                continue
            try:
                found.update(dict.fromkeys(e for entry in file_specs(spec) for e in spec_engines(entry)
                                           if isinstance(e, str)))
            except (TypeError, AttributeError):
                pass
    return list(found)


def cmd_unpack(args: argparse.Namespace) -> int:
    src = Source(args.src)
    written = unpack(src, Path(args.dest))
    print(f"{len(src.files)} files, {written / 1e6:.1f} MB")
    return 0


def read_chunk(fh, rel: str) -> bytes:
    """The next chunk of entry `rel`; Refused naming it when it is damaged in the zip."""
    try:
        return fh.read(CHUNK)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise Refused(f"entry {rel!r}: damaged in the zip ({exc})") from None


def cmd_differs(args: argparse.Namespace) -> int:
    """A version is its content: what a same-version source would change, if anything."""
    src, installed = Source(args.src), Path(args.dir)
    if not installed.is_dir():
        raise Refused(f"{installed}: missing, though current or previous names it (remove that link, then install again)")
    have = {p.relative_to(installed).as_posix() for p in installed.rglob("*") if p.is_file()}
    for rel in sorted(set(src.files) | have, key=lambda r: (r != "manifest.json", r)):
        if rel not in have:
            print(f"a file more ({rel})")
            return 0
        if rel not in src.files:
            print(f"a file less ({rel})")
            return 0
        with src.open(rel) as new, open(installed / rel, "rb") as old:
            while True:
                chunk = read_chunk(new, rel)
                if chunk != old.read(len(chunk) or 1):
                    # the manifests are the same (compared first): of a sealed file that differs, one copy is
                    # not the file its manifest's sha256 names
                    sealed = _sealed_files(installed / "manifest.json").get(rel)
                    if sealed is None:
                        print(f"a different {rel}")
                    elif _sha256(installed / rel) != sealed:
                        print(f"a {rel} whose installed copy fails its manifest's sha256 (damaged on this board: "
                              f"install the bundle as a new version, or remove {installed} first if it is not "
                              "current)")
                    else:
                        print(f"a different {rel}, whose sha256 is not its manifest's (this bundle's copy is "
                              "damaged, or was changed after sealing)")
                    return 0
                if not chunk:
                    break
    return 0


def _sealed_files(manifest: Path) -> dict:
    """File -> sha256, of the files a manifest seals (`{"file": ..., "sha256": ...}` anywhere in it, and
    `labels` with `labels_sha256` in it or a stage)."""
    try:
        doc = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return {}
    found, todo = {}, [doc]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            if isinstance(node.get("file"), str) and isinstance(node.get("sha256"), str):
                found[node["file"]] = node["sha256"]
            if isinstance(node.get("labels"), str) and isinstance(node.get("labels_sha256"), str):
                found[node["labels"]] = node["labels_sha256"]
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    return found


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def unpack(src: Source, dest: Path) -> int:
    """Copy the bundle's files into the empty `dest`, synced; the bytes written."""
    if any(dest.iterdir()):
        raise Refused(f"{dest}: not empty")
    written = 0
    for rel in sorted(src.dirs):
        os.makedirs(dest / rel, 0o755, exist_ok=True)
    for rel in sorted(src.files):
        target = dest / rel
        os.makedirs(target.parent, 0o755, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with src.open(rel) as fin, os.fdopen(fd, "wb") as fout:
            while True:
                chunk = read_chunk(fin, rel)
                if not chunk:
                    break
                written += len(chunk)
                if written > MAX_BYTES:  # a zip whose headers lie about the sizes
                    raise Refused(f"entry {rel!r}: uncompressed size passes {MAX_BYTES >> 20} MiB")
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())  # the rename to <version>/ must not publish half-written files
    for dirpath, _dirs, _files in os.walk(dest):
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return written


# --- the daemon's config ---

NEW_CONFIG = """\
# lited's config (docs/config.md): YAML (or JSON). Check it with
#   lited config check --config {conf}
# then apply it with `systemctl reload {unit}` (or `lited ctl reload`).
# Where {unit} puts its sockets (its RuntimeDirectory): `lited ctl --config`
# and apps that read this file find it there.
runtime_dir: {runtime_dir}
models:
  {model}: {path}
# The camera streams, each feeding one of the models above, e.g.
# streams:
#   - name: cam0
#     source: v4l2:///dev/video0?width=640&height=480&fps=30
#     model: {model}
streams: []
"""


def _streams_using(config: dict, model: str) -> int:
    models = config.get("models") if isinstance(config.get("models"), dict) else {}
    streams = config.get("streams") if isinstance(config.get("streams"), list) else []
    return sum(1 for s in streams if isinstance(s, dict)
               and (s.get("model") == model or (s.get("model") is None and list(models) == [model])))


def _with_model_yaml(text: str, config: dict, model: str, path: str) -> str:
    """`text` with `model: path` added under its block `models:`, comments and all;
    Refused when that is not a plain block mapping the line can be added to."""
    import yaml

    lines = text.splitlines(keepends=True)
    at = next((i for i, line in enumerate(lines) if re.match(r"models:\s*(#.*)?$", line)), None)
    if at is not None:
        child = next((line for line in lines[at + 1:] if line.strip() and not line.lstrip().startswith("#")), "")
        indent = re.match(r"\s*", child).group(0) or "  "
        lines.insert(at + 1, f"{indent}{model}: {path}\n")
        new = "".join(lines)
    else:
        new = text + ("" if text.endswith("\n") or not text else "\n") + f"models:\n  {model}: {path}\n"
    want = {**config, "models": {**(config.get("models") or {}), model: path}}
    try:
        got = yaml.safe_load(new)
    except yaml.YAMLError:
        got = None
    if got != want:
        raise Refused("cannot add the model to it by itself (models: is not a plain block mapping): "
                      f"add `{model}: {path}` under models: by hand")
    return new


def _json_like(text: str, config: dict) -> str:
    """`config` as JSON laid out as `text` was: one line stays one line, else its indent."""
    lines = text.strip().splitlines()
    if len(lines) == 1:
        return json.dumps(config, ensure_ascii=False) + "\n"
    indent = len(lines[1]) - len(lines[1].lstrip(" ")) or 2
    return json.dumps(config, indent=indent, ensure_ascii=False) + "\n"


def _give_config_access(tmp: Path, conf: Path) -> None:
    """The new config's mode and owners: the old file's, else 0640 and group `lited` (the
    daemon's, whose members are its users): a config holds `http.token`, which others must not
    read (a new config was 0644, as it still is where that group does not exist)."""
    import grp

    if conf.exists():
        st = conf.stat()
        mode, uid, gid = st.st_mode & 0o777, st.st_uid, st.st_gid
    else:
        try:
            mode, uid, gid = 0o640, -1, grp.getgrnam("lited").gr_gid
        except KeyError:  # no such group yet (the units not installed): as before, or no user could read it
            mode, uid, gid = 0o644, -1, -1
    if os.geteuid() == 0:
        os.chown(tmp, uid, gid)
    os.chmod(tmp, mode)


def cmd_config(args: argparse.Namespace) -> int:
    """Add MODEL -> PATH to CONF (written whole to a temp file, then renamed);
    never touches streams or a model that the user pointed elsewhere. A new
    config is YAML with comments; an existing one keeps its format (JSON stays
    JSON; YAML keeps its comments: the line is added under `models:`)."""
    from lited.config import ConfigError, read_config_file

    conf = Path(args.conf)
    if conf.exists():
        try:
            config = read_config_file(conf)
        except ConfigError as exc:
            raise Refused(f"{str(exc).split(': ', 1)[1]}; fix it or move it away") from None
        models = config.get("models") if isinstance(config, dict) else []
        models = {} if models is None else models  # no models: yet (or `models:` empty): it gets one
        if not isinstance(models, dict):  # (main names the file)
            raise Refused("'models' is not a mapping; fix it or move it away")
        streams = _streams_using(config, args.model)
        if args.model in models:
            entry = models[args.model]
            where = entry.get("bundle") if isinstance(entry, dict) else entry  # {"bundle", "engine", ...} too
            if where == args.path:
                print(f"present {streams} {conf} already has model {args.model}")
            else:
                print(f"other {streams} {conf}: model {args.model} is {where}, not {args.path}: left as it is")
            return 0
        text = conf.read_text(encoding="utf-8")
        try:
            json.loads(text)
            new_text = _json_like(text, {**config, "models": {**models, args.model: args.path}})
        except ValueError:
            new_text = _with_model_yaml(text, config, args.model, args.path)
        verb, streams = "added", _streams_using({**config, "models": {**models, args.model: args.path}}, args.model)
        message = f"added model {args.model} to {conf}"
    else:
        unit = f"lited@{conf.stem}" if conf.name != "lited.conf" else "lited"
        new_text = NEW_CONFIG.format(conf=args.named or conf, unit=unit, model=args.model, path=args.path,
                                     runtime_dir=args.runtime_dir)
        verb, streams = "created", 0
        message = f"created {conf} with model {args.model} and no streams"
    if not args.dry_run:
        conf.parent.mkdir(parents=True, exist_ok=True)
        tmp = conf.with_name(f".{conf.name}.{os.getpid()}")
        tmp.write_text(new_text, encoding="utf-8")
        _give_config_access(tmp, conf)
        os.replace(tmp, conf)
    print(verb, streams, message)
    return 0


# --- the running daemon ---

def req_endpoint(conf: Path, runtime_dir: str) -> str:
    """The daemon's request endpoint as its config sets it (first ipc:// one)."""
    from lited.config import read_config_file

    config = read_config_file(conf)
    req = (config.get("endpoints") or {}).get("req")
    for endpoint in [req] if isinstance(req, str) else req or []:
        if endpoint.startswith("ipc://"):
            return endpoint
    return f"ipc://{config.get('runtime_dir') or runtime_dir}/req.sock"


def cmd_wait(args: argparse.Namespace) -> int:
    """Poll `status` until the daemon serves the version, or its reload failed.
    With --reloaded and the version served already (a rollback to what never
    left), wait for the reload's own outcome too, for up to SETTLE seconds."""
    from lited.client import Client, ClientError

    endpoint = req_endpoint(Path(args.config), args.runtime_dir)
    deadline = time.monotonic() + args.timeout
    first = settled_at = None
    last = "no answer"
    with Client(endpoint, timeout=2) as client:
        while time.monotonic() < deadline:
            try:
                status = client.status()
            except (TimeoutError, ClientError) as exc:  # a missing socket is said at once: pace the polling
                last = f"no answer on {endpoint} ({exc})"
                time.sleep(0.2)
                continue
            model = status["models"].get(args.model)
            served = model["version"] if model else "-"
            first = served if first is None else first
            reload = status.get("last_reload") or {}
            # a reload after we asked for one, or a daemon started since (it read the config afresh:
            # one killed mid-reload and restarted by systemd has no reload of ours to wait for)
            ours = reload.get("ts", 0) >= args.since or time.time() - status.get("uptime_s", 1e12) >= args.since
            if ours and not reload.get("ok", True):
                print(f"reload failed: {reload.get('error')}", file=sys.stderr)
                return 1
            if served == args.version:
                settled_at = settled_at or time.monotonic() + SETTLE
                if not args.reloaded or first != args.version or ours or time.monotonic() > settled_at:
                    print(f"serving {args.model} {served}" if model else f"no longer serving {args.model}")
                    return 0
            last = f"serving {args.model} {served}"
            time.sleep(0.2)
    print(f"the daemon did not serve {args.model} {args.version} within {args.timeout:.0f} s ({last})",
          file=sys.stderr)
    return 3


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check")
    p.add_argument("src")
    p.add_argument("--unpack-to", help="a new scratch directory: unpack there and load the bundle")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("unpack")
    p.add_argument("src")
    p.add_argument("dest")
    p.set_defaults(func=cmd_unpack)
    p = sub.add_parser("differs")
    p.add_argument("src")
    p.add_argument("dir")
    p.set_defaults(func=cmd_differs)
    p = sub.add_parser("config")
    p.add_argument("conf")
    p.add_argument("model")
    p.add_argument("path")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--named", help="the config's path on the board (under --prefix), for a new config's header")
    p.add_argument("--runtime-dir", default="/run/lited", help="the unit's runtime directory, for a new config")
    p.set_defaults(func=cmd_config)
    p = sub.add_parser("wait")
    p.add_argument("--config", required=True)
    p.add_argument("--runtime-dir", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--since", type=float, required=True)
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--reloaded", action="store_true", help="a reload was asked for: wait for its outcome")
    p.set_defaults(func=cmd_wait)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except Refused as exc:
        print(f"{getattr(args, 'src', None) or getattr(args, 'conf', '')}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # disk full, permissions: one line, not a traceback
        print(f"{exc.strerror or exc}{f' ({exc.filename})' if exc.filename else ''}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
