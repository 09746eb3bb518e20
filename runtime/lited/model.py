"""A loaded bundle: engine + preprocessing + decoder, ready to infer, and
the later stages of a cascade.

Built once, warmed up, then used from one thread (the engine's rule). The
result keys are the ones `lited infer --json` prints and the bus publishes:
`task`, `detections`, `classes` (plus what a text decoder adds, `text` and
`text_score`), `timings_ms`. A bundle with `stages` runs each later stage on
crops of the first stage's detections (cascade.py) and adds its result to
each detection.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from lited.bundle import Bundle, BundleError, Choice, ModelSpec, load_bundle
from lited.cascade import Cascade, Stage
from lited.decoders import make_decoder
from lited.decoders.base import shapes
from lited.engine_process import EngineProcess
from lited.engines import EngineError, open_engine
from lited.errors import first_line
from lited.geometry import Geometry
from lited.preprocess import Preprocessor
from lited.stream.stats import StageTimer

# Source size used to warm up a dynamic-input model: small on purpose. Paddle
# Lite sizes its activations to the input (PP-OCRv4 det: ~165 MB at 192x480,
# ~540 MB at 480x640 on x86), and the first real frame gets a predictor of its
# own size anyway (see engines/paddle_lite.py), so a large warm-up only wastes memory.
WARMUP_SIZE = (64, 64)


class Part:
    """One model of a bundle (its first stage or a later one): the engine,
    in this process or in a process of its own, its preprocessing and its decoder."""

    def __init__(self, spec: ModelSpec, target: Optional[str], options: Optional[dict], isolated: bool,
                 engine: Optional[str] = None, precision: Optional[str] = None,
                 choice: Optional[Choice] = None, run_timeout: Optional[float] = None,
                 cpus: Optional[Sequence[int]] = None) -> None:
        """`isolated`: run the engine in a child process (engine_process.py),
        as streams and the daemon do, so its `run()` does not hold this
        process's GIL and a crash in the backend does not take it down.
        `engine`, `precision`: the config's choice among this part's files
        (else the bundle's order of preference, see `ModelSpec.choose`);
        `options` (e.g. `threads`) go over the bundle's options for it.
        `choice`: a file and engine picked already (`ModelSpec.choices`).
        `run_timeout` (isolated only): seconds a run may take before the
        engine process counts as stuck and is killed (EngineError); `cpus`
        (isolated only): the cores of the engine process (lited/cores.py). The
        engine checks the manifest's sha256 on the very bytes it loads."""
        self.spec = spec
        self.choice = choice or spec.choose(target, engine, precision)
        self.model_file = mf = self.choice.model
        checksums = {str(f.path): f.sha256 for f in (mf, mf.params) if f is not None}
        engine_options = {**self.choice.options, **(options or {})}
        manifest = str(spec.root / "manifest.json")
        try:
            if isolated:
                self.engine = EngineProcess(self.choice.engine, str(mf.path), engine_options, checksums,
                                            run_timeout, cpus)
            else:
                self.engine = open_engine(self.choice.engine, str(mf.path), engine_options, checksums)
        except EngineError as exc:  # an engine option it refuses (`device: TPU`) named no bundle or file
            if mf.path.name in str(exc):
                raise
            raise EngineError(f"bundle {manifest}: {mf.field or mf.path.name} on {self.choice.engine}: "
                              f"{first_line(exc)}") from exc
        try:
            check_input_shapes(spec, self.engine.inputs, f"{mf.path.name} ({mf.field})" if mf.field else mf.path.name)
            self.image_input = spec.image_input
            self.engine.image_input = self.image_input
            try:
                self.preprocess = Preprocessor(spec.preprocess, spec.inputs[self.image_input]["shape"])
                self.decoder = make_decoder(spec.decoder, spec.labels)
                self.decoder_reads: Optional[str] = None  # what the decoder found in the warm-up's outputs
                self.decoder_classes: Optional[int] = None  # the classes it counted there (None: it cannot say)
            except ValueError as exc:  # "preprocess.resize.mode: ...": the field, in its bundle (and stage)
                raise BundleError(manifest, [f"{spec.where}{first_line(exc)}"]) from None
            self._extra = [(i, s["fill"], np.empty((1, 2), np.float32))
                           for i, s in enumerate(spec.inputs) if "fill" in s]
        except BaseException:
            self.engine.close()
            raise

    def close(self) -> None:
        """Free the engine now (an isolated one stops its process)."""
        self.engine.close()

    def warm_up(self, runs: int = 1) -> None:
        """Run on a grey frame so the first real frame pays no first-run cost,
        and check what only a run can tell: output count and class count."""
        if runs <= 0:
            return
        shape = self.spec.inputs[self.image_input]["shape"]
        if -1 in shape:
            h, w = WARMUP_SIZE
        else:
            h, w = (shape[2], shape[3]) if self.preprocess.layout == "NCHW" else (shape[1], shape[2])
        frame = np.full((h, w, 3), 128, np.uint8)
        for _ in range(runs):
            outputs, geom = self.forward(frame)
        problem = self.decoder.layout_problem(outputs)
        if problem:
            raise self._decoder_refused(problem)
        # What a layout check does not catch (one that needs the input size: a GFL head's strides) fails
        # here, at load, not in every frame's post-processing. The labels are counted first where the
        # decoder can count its classes (it cannot when it read no layout at this input size): a keys
        # file a line short makes a CTC decode fail too, and its count says which file to fix.
        try:
            self.decoder.decode(outputs, geom)
            unreadable = None
        except (ValueError, IndexError, KeyError) as exc:
            unreadable = first_line(exc)
        self.decoder_reads = None if unreadable else self.decoder.describe(outputs)
        classes = self.decoder_classes = self.decoder.num_classes(outputs)
        labels = self.spec.labels
        if classes and self.spec.labels_file is not None and (
                len(labels) < classes or (self.decoder.EXACT_LABELS and len(labels) != classes)):  # empty too
            exact = " (a keys file needs exactly one line a class: one more shifts every character)" \
                if len(labels) > classes else ""
            reading = f", as the {self.spec.decoder['type']} decoder reads the outputs {shapes(outputs)}"
            raise BundleError(str(self.spec.labels_file),
                              [f"{len(labels)} labels for {classes} classes{exact}{reading}{self.decoder.CLASSES_ARE}"])
        if unreadable:
            raise self._decoder_refused(unreadable)

    def _decoder_refused(self, why: str) -> BundleError:
        return BundleError(str(self.spec.root / "manifest.json"),
                           [f"{self.spec.where}decoder: {self.spec.decoder['type']}: {why}"])

    def forward(self, image: np.ndarray) -> tuple:
        """(outputs, geometry) of one run on a BGR uint8 image. Preprocessing
        writes straight into the engine's input buffer when the engine has
        one (no hand-over copy)."""
        view = self.engine.input_view(self.image_input, self.preprocess.plan(image.shape))
        geom = self.preprocess(image, out=view)
        if view is None:
            self.engine.set_input(self.image_input, self.preprocess.tensor)
        self.set_extra_inputs(geom)
        return self.engine.run(), geom

    def input_arrays(self, image: np.ndarray) -> list:
        """Every input of the model for `image`, in order, as new arrays (what
        a quantiser calibrates on: exactly what this model would be fed)."""
        geom = self.preprocess(image)
        arrays = [self.preprocess.tensor.copy() if i == self.image_input else None
                  for i in range(len(self.spec.inputs))]
        for index, fill, _ in self._extra:
            arrays[index] = np.array([_fill(fill, geom)], np.float32)
        return arrays

    def set_extra_inputs(self, geom: Geometry, input_set: Optional[int] = None, batch: int = 1) -> None:
        """The inputs a PaddleDetection export wants besides the image, filled
        from the geometry (`input_set`: of an isolated engine; see `_fill`)."""
        for index, fill, buf in self._extra:
            array = buf if batch == 1 else np.empty((batch, 2), np.float32)
            array[:] = _fill(fill, geom)
            if input_set is None:
                self.engine.set_input(index, array)
            else:
                self.engine.set_input(index, array, input_set)

    def decode_batch(self, images: List[np.ndarray]) -> List[dict]:
        """One decoded result per image, in one engine run: the images must
        give the same input tensor shape and the model a batch dimension of -1."""
        shape = self.preprocess.plan(images[0].shape)
        n = len(images)
        view = self.engine.input_view(self.image_input, (n, *shape[1:]))
        batch = view if view is not None else np.empty((n, *shape[1:]), np.float32)
        geoms = []
        for k, image in enumerate(images):
            geoms.append(self.preprocess(image, out=batch[k:k + 1]))
        if view is None:
            self.engine.set_input(self.image_input, batch)
        self.set_extra_inputs(geoms[0], batch=n)
        outputs = self.engine.run()
        return [self.decoder.decode([o[k:k + 1] for o in outputs], geom) for k, geom in enumerate(geoms)]


class Model(Part):
    """Everything needed to turn an image into a result: the bundle's own
    model (this Part) and the later stages of its cascade, if any."""

    def __init__(self, bundle: Bundle, target: Optional[str] = None, options: Optional[dict] = None,
                 warmup: int = 1, isolated: bool = False, engine: Optional[str] = None,
                 precision: Optional[str] = None, choice: Optional[Choice] = None,
                 run_timeout: Optional[float] = None, cpus: Optional[Sequence[int]] = None) -> None:
        """`engine`, `precision`, `choice`, `cpus`: the first stage's (see `Part`;
        a later stage's engine process runs on the cores of the thread that builds it);
        each later stage runs on the same engine and precision where it
        lists a file for them, else on its own first choice (`ModelSpec.choose_like`);
        `run_timeout`: as for `Part`, every stage's."""
        self.bundle = bundle
        self.name = bundle.name
        self.version = bundle.version
        self.task = bundle.task
        self.cascade = Cascade([])
        super().__init__(bundle, target, options, isolated, engine, precision, choice, run_timeout, cpus)
        try:
            for spec in bundle.stages:
                part = Part(spec, target, options, isolated, choice=spec.choose_like(target, self.choice),
                            run_timeout=run_timeout)
                self.cascade.stages.append(Stage(spec, part))
            self.warm_up(warmup)
            for stage in self.cascade.stages:
                stage.part.warm_up(warmup)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Free the engines now (isolated ones stop their processes)."""
        super().close()
        for stage in self.cascade.stages:
            stage.part.close()

    def engine_ended(self) -> Optional[str]:
        """Why one of its engine processes (the first stage's or a later one's) ended, if one has;
        None while all run (or for engines in this process)."""
        for engine in [self.engine] + [stage.part.engine for stage in self.cascade.stages]:
            ended = getattr(engine, "ended", None)
            why = ended() if ended is not None else None
            if why:
                return why
        return None

    def infer(self, image: np.ndarray) -> dict:
        """Run the model (and its cascade) on a BGR uint8 image; boxes come back in its pixels."""
        timer = StageTimer()
        view = self.engine.input_view(self.image_input, self.preprocess.plan(image.shape))
        geom = self.preprocess(image, out=view)
        timer.lap("preprocess")
        if view is None:
            self.engine.set_input(self.image_input, self.preprocess.tensor)
        self.set_extra_inputs(geom)
        outputs = self.engine.run()
        timer.lap("infer")
        result = self.decoder.decode(outputs, geom)
        timer.lap("postprocess")
        if self.cascade:
            crops = self.cascade.cut(image, result["detections"])
            timer.lap("crop")
            self.cascade.run(crops, result["detections"], timer)
        return {"task": self.task, **result, "timings_ms": timer.ms}


def check_input_shapes(spec: ModelSpec, engine_inputs: list, model_field: str) -> None:
    """Refuse a manifest whose `inputs` contradict the model file, before any
    run: a wrong shape either fails deep inside the backend or, where the
    backend resizes its input (Paddle Lite), runs and gives wrong results.
    Only what the engine declares is compared (Paddle Lite's Python API
    declares no input shape; -1 or 0 is a dynamic dimension). A dimension the
    manifest leaves dynamic past the batch (a keep-ratio resize) is refused
    where the model fixes it: the first input of another size would fail."""
    where = str(spec.root / "manifest.json")
    if len(engine_inputs) != len(spec.inputs):
        raise BundleError(where, [f"{spec.where}inputs: {len(spec.inputs)} listed, but {model_field} "
                                  f"takes {len(engine_inputs)}"])
    for i, (declared, actual) in enumerate(zip(spec.inputs, engine_inputs)):
        shape, model_shape = list(declared["shape"]), list(actual.shape)
        if not model_shape:
            continue
        if len(shape) != len(model_shape) or any(
                b > 0 and a != b and (a > 0 or axis > 0) for axis, (a, b) in enumerate(zip(shape, model_shape))):
            raise BundleError(where, [f"{spec.where}inputs[{i}].shape: {shape}, but {model_field} takes "
                                      f"{model_shape} (-1: any)"])


def _fill(fill: str, geom) -> tuple:
    """An extra input's value: `im_shape` the model-input size, and
    `scale_factor` 1 so its boxes stay in input pixels (the geometry maps
    them back to the source, whatever the resize mode)."""
    return (geom.in_h, geom.in_w) if fill == "im_shape" else (1.0, 1.0)


def load_model(path: str, target: Optional[str] = None, options: Optional[dict] = None, isolated: bool = False,
               engine: Optional[str] = None, precision: Optional[str] = None) -> Model:
    """Validate the bundle at `path`, then load and warm up its model."""
    return Model(load_bundle(path), target, options, isolated=isolated, engine=engine, precision=precision)
