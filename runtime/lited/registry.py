"""One registry convention for every family of interchangeable parts.

A family is a package (`lited.sources`, `lited.engines`, `lited.decoders`)
with a small base class in `base.py`. A member is one file in that package
defining a subclass that sets `kind`, the name configs and manifests use
(or a tuple of names, for a member serving several: rtsp, http, https). Adding a member is
adding a file: nothing else lists it (as Frigate's detector plugins).
Every module of the package is imported (helpers too: `sources/opencv.py`,
`decoders/nms.py`); a module defines members of a family only if it subclasses
its base. Engines import their backends lazily, so the engine registry is cheap
to build; sources and decoders use OpenCV and numpy, which any command that
reads frames loads anyway.
"""
from __future__ import annotations

import importlib
import pkgutil
import threading
from typing import Dict, Generic, Iterator, Type, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """`kind` -> class, for the subclasses of `base` defined in `package`."""

    def __init__(self, package: str, base: Type[T]) -> None:
        self.package = package
        self.base = base
        self._members: Dict[str, Type[T]] = {}
        self._lock = threading.Lock()
        self._loaded = False

    def _load(self) -> Dict[str, Type[T]]:
        with self._lock:
            if not self._loaded:
                pkg = importlib.import_module(self.package)
                for info in pkgutil.iter_modules(pkg.__path__):
                    if not info.name.startswith("_") and info.name != "base":
                        importlib.import_module(f"{self.package}.{info.name}")
                for cls in _subclasses(self.base):
                    kinds = cls.__dict__.get("kind")
                    if not kinds or not cls.__module__.startswith(self.package + "."):
                        continue
                    for kind in (kinds,) if isinstance(kinds, str) else kinds:
                        if kind in self._members and self._members[kind] is not cls:
                            raise TypeError(f"{self.package}: kind '{kind}' defined twice "
                                            f"({self._members[kind].__module__}, {cls.__module__})")
                        self._members[kind] = cls
                self._loaded = True
        return self._members

    def get(self, kind: str) -> Type[T]:
        """The member named `kind`; KeyError if there is none."""
        return self._load()[kind]

    def kinds(self) -> tuple:
        """Every member's name, sorted."""
        return tuple(sorted(self._load()))

    def __contains__(self, kind: object) -> bool:
        return kind in self._load()

    def __iter__(self) -> Iterator[str]:
        return iter(self.kinds())


def _subclasses(cls: type) -> list:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_subclasses(sub))
    return out
