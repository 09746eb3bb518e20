"""How lited shares the CPU between the streams' engines and its own work.

An engine process runs one frame at a time on its threads; lited's own
threads (capture and decoding, preprocessing, decoding outputs, the bus)
prepare the next frames meanwhile. When the streams' engine threads leave
cores over, each engine process gets cores of its own and lited's threads
the rest: a frame's pipeline work then never takes an engine's core from it
mid-run, and nothing migrates between cores. Measured on two cores
(`lited run` on a looping 640x480 file, one engine thread, 3 runs each,
alternating), against letting the scheduler place everything:
FastestDet on onnxruntime 127-134 fps against 112-116; UltraFace on OpenVINO
and the PP-OCR classifier as fast or faster. When the engines need every
core, nothing is pinned: lited's threads then share the engines' cores, as
they would without a plan.

Engine processes are placed by the cores they are told of (`EngineProcess`
pins the child's threads when it opens the model); lited's own threads by
`apply`, which pins every thread of this process (threads made later
inherit their maker's cores, and so do a cascade's later stages' engine
processes; request workers' engine processes are given every core).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class CorePlan:
    """Per stream, the cores of its engine process; lited's own cores; the
    threads OpenCV gets; whether anything is pinned."""
    engines: dict          # stream name -> tuple of cpus
    own: tuple
    opencv_threads: int
    pinned: bool

    def describe(self) -> str:
        """One line for the log."""
        if not self.pinned:
            return f"engines and lited's own threads share cores {_span(self.own)}"
        return ", ".join(f"engine of {name} on cores {_span(cpus)}" for name, cpus in self.engines.items()) \
            + f"; lited's own threads on cores {_span(self.own)}"


def share_threads(requested: dict, cores: int) -> dict:
    """Threads per stream that fit `cores` together: as asked when they fit,
    else each scaled down in proportion, never below 1 (a stream of one
    thread more than the cores is better than a stream that never runs)."""
    total = sum(requested.values())
    if total <= cores:
        return dict(requested)
    return {name: max(1, threads * cores // total) for name, threads in requested.items()}


def plan_cores(engine_threads: dict, cpus: Iterable[int], pin: bool = True) -> CorePlan:
    """Give each stream's engine (`{stream: threads}`) cores of its own from
    the highest-numbered down (core 0 usually takes the interrupts), and
    lited's own threads the cores left, when at least one is left; else
    (or with `pin` false) everything on every core of `cpus`."""
    cpus = sorted(cpus)
    need = sum(engine_threads.values())
    if not pin or need >= len(cpus):
        every = tuple(cpus)
        return CorePlan({name: every for name in engine_threads}, every, max(1, len(cpus) - need), False)
    engines, top = {}, len(cpus)
    for name, threads in engine_threads.items():
        engines[name] = tuple(cpus[top - threads:top])
        top -= threads
    own = tuple(cpus[:top])
    return CorePlan(engines, own, len(own), True)


def pin_threads(cpus: Iterable[int], pid: object = "self") -> None:
    """Every thread of process `pid` (default this one) on `cpus` (threads
    started later inherit the cores of the thread that starts them)."""
    cpus = set(cpus)
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:  # the process is gone
        return
    for tid in tids:
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:  # the thread ended meanwhile
            pass


def apply(plan: CorePlan) -> None:
    """This process's side of `plan`: its threads on `plan.own`, OpenCV on
    as many threads (its default, every core, only contended with the engines:
    FastestDet on onnxruntime, 9.0 -> 7.4 ms of lited's CPU a frame)."""
    import cv2

    pin_threads(plan.own)
    cv2.setNumThreads(plan.opencv_threads)


def _span(cpus: Iterable[int]) -> str:
    return ",".join(str(c) for c in cpus)
