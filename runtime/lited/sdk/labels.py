"""Class names from the files training frameworks leave behind.

A bundle's labels.txt is one name a line, in output order. Sources differ:
plain lists (PaddleDetection's label_list, darknet .names files) and
PaddleClas `class_id_map_file`s, whose lines are `<id><delimiter><name>`
and need not be sorted. Reading is deferred until the builder knows that no
`--labels` file overrides the config's, so a config naming a file that is not
here only fails when that file is actually needed.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from lited.bundle import split_labels

from lited.sdk import BuildError, read_utf8


@dataclass(frozen=True)
class LabelFile:
    """A labels file to read later: `lines` (one name a line) or `class_id_map`."""

    path: Path
    kind: str = "lines"
    delimiter: str = " "
    origin: str = ""  # where it was named, for error messages

    def read(self) -> list:
        where = self.origin or str(self.path)
        if not self.path.is_file():
            raise BuildError(f"{where}: labels file {self.path} not found; give --labels FILE")
        text = read_utf8(self.path, where)
        if self.kind == "class_id_map":
            return _class_id_map(text, self.delimiter or " ", where)
        names = split_labels(text)  # kept exactly: a key file may hold " " or U+3000 as a label
        if not any(name.strip() for name in names):
            raise BuildError(f"{where}: labels file {self.path} is empty")
        return names


def _class_id_map(text: str, delimiter: str, where: str) -> list:
    """`0 tench` lines -> names by id; ids must be exactly 0..N-1."""
    by_id: dict = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        head, _, name = line.strip().partition(delimiter)
        if not head.isdigit() or not name.strip():
            raise BuildError(f"{where}: line {number}: expected '<class id> <name>', got {line.strip()!r}")
        by_id[int(head)] = name.strip()
    missing = sorted(set(range(len(by_id))) - set(by_id))
    if missing:
        raise BuildError(f"{where}: class ids are not 0..{len(by_id) - 1}: {missing[0]} is missing")
    return [by_id[i] for i in range(len(by_id))]


def resolve(source: object) -> list | None:
    """Names from a config's `labels`: a list, a LabelFile, or None."""
    if source is None:
        return None
    if isinstance(source, LabelFile):
        return source.read()
    return [str(name) for name in source]  # type: ignore[union-attr]


def origin(source: object, configs: str) -> str | None:
    """Where a config's `labels` came from, for messages: the file it names,
    or the config that lists them (None: no labels)."""
    if isinstance(source, LabelFile):
        return f"{source.origin or configs + ': labels'} {source.path}"
    return None if source is None else f"{configs}: labels"


@contextmanager
def named_as(bundle_labels: Path, origin_: str | None) -> Iterator[None]:
    """Within: a BuildError naming the bundle's labels file (the daemon's lited
    refused it: fewer labels than the model's classes) names where the labels
    came from instead, the file the user can fix."""
    try:
        yield
    except BuildError as exc:
        if origin_ is None:
            raise
        text = str(exc)
        for form in (f"bundle {bundle_labels}", f"bundle {bundle_labels.resolve()}", str(bundle_labels)):
            text = text.replace(form, origin_)
        if text == str(exc):
            raise
        raise BuildError(text) from None
