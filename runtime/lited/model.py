"""A loaded bundle: engine + preprocessing + decoder, ready to infer.

Built once, warmed up, then used from one thread (the engine's rule). The
result keys are the ones `lited infer --json` prints and the bus publishes:
`task`, `detections`, `classes`, `timings_ms`.
"""
from __future__ import annotations

import numpy as np

from lited.bundle import Bundle, BundleError, Choice, load_bundle
from lited.decoders import make_decoder
from lited.engine_process import EngineProcess
from lited.engines import open_engine
from lited.preprocess import Preprocessor
from lited.stream.stats import StageTimer

# Source size used to warm up a dynamic-input model: small on purpose. Paddle
# Lite sizes its activations to the input (PP-OCRv4 det: ~165 MB at 192x480,
# ~540 MB at 480x640 on x86), and the first real frame gets a predictor of its
# own size anyway (see engines/paddle_lite.py), so a large warm-up only wastes memory.
WARMUP_SIZE = (64, 64)


class Model:
    """Everything needed to turn an image into a result."""

    def __init__(self, bundle: Bundle, target: str | None = None, options: dict | None = None,
                 warmup: int = 1, isolated: bool = False, engine: str | None = None,
                 precision: str | None = None, choice: Choice | None = None) -> None:
        """`isolated`: run the engine in a child process (engine_process.py),
        as streams and the daemon do, so its `run()` does not hold this
        process's GIL and a crash in the backend does not take it down.
        `engine`, `precision`: the config's choice among the bundle's files
        (else the bundle's order of preference, see `Bundle.choose`);
        `options` (e.g. `threads`) go over the bundle's options for it.
        `choice`: a file and engine picked already (`Bundle.choices`)."""
        self.bundle = bundle
        self.choice = choice or bundle.choose(target, engine, precision)
        self.model_file = self.choice.model
        opener = EngineProcess if isolated else open_engine
        self.engine = opener(self.choice.engine, str(self.model_file.path), {**self.choice.options, **(options or {})})
        self.image_input = bundle.image_input
        self.engine.image_input = self.image_input
        self.preprocess = Preprocessor(bundle.preprocess, bundle.inputs[self.image_input]["shape"])
        self._extra = [(i, spec["fill"], np.empty((1, 2), np.float32)) for i, spec in enumerate(bundle.inputs)
                       if "fill" in spec]
        self.decoder = make_decoder(bundle.decoder, bundle.labels)
        self.name = bundle.name
        self.version = bundle.version
        self.task = bundle.task
        try:
            self.warm_up(warmup)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Free the engine now (an isolated one stops its process)."""
        self.engine.close()

    def warm_up(self, runs: int = 1) -> None:
        """Run on a grey frame so the first real frame pays no first-run cost,
        and check what only a run can tell: output count and class count."""
        if runs <= 0:
            return
        shape = self.bundle.inputs[self.image_input]["shape"]
        if -1 in shape:
            h, w = WARMUP_SIZE
        else:
            h, w = (shape[2], shape[3]) if self.preprocess.layout == "NCHW" else (shape[1], shape[2])
        frame = np.full((h, w, 3), 128, np.uint8)
        for _ in range(runs):
            outputs = self._forward(frame)[0]
        classes = self.decoder.num_classes(outputs)
        labels = self.bundle.labels
        if classes and labels and len(labels) < classes:
            raise BundleError(str(self.bundle.root / self.bundle.manifest["labels"]),
                              [f"{len(labels)} labels for {classes} classes"])

    def _forward(self, image: np.ndarray) -> tuple:
        geom = self.preprocess(image)
        self.set_inputs(self.preprocess.tensor, geom)
        return self.engine.run(), geom

    def set_inputs(self, tensor: np.ndarray, geom) -> None:
        """Hand the image tensor to the engine, and the extra inputs a
        PaddleDetection export wants: `im_shape` is the input size, and
        `scale_factor` is 1 so its boxes stay in input pixels (the geometry
        maps them back to the source, whatever the resize mode)."""
        self.engine.set_input(self.image_input, tensor)
        self.set_extra_inputs(geom)

    def input_arrays(self, image: np.ndarray) -> list:
        """Every input of the model for `image`, in order, as new arrays (what
        a quantiser calibrates on: exactly what this model would be fed)."""
        geom = self.preprocess(image)
        arrays = [self.preprocess.tensor.copy() if i == self.image_input else None for i in range(len(self.bundle.inputs))]
        for index, fill, _ in self._extra:
            arrays[index] = np.array([_fill(fill, geom)], np.float32)
        return arrays

    def set_extra_inputs(self, geom, input_set: int | None = None) -> None:
        """The inputs filled from the geometry (`input_set`: of an isolated engine)."""
        for index, fill, buf in self._extra:
            buf[0] = _fill(fill, geom)
            if input_set is None:
                self.engine.set_input(index, buf)
            else:
                self.engine.set_input(index, buf, input_set)

    def infer(self, image: np.ndarray) -> dict:
        """Run the model on a BGR uint8 image; boxes come back in its pixels.
        Preprocessing writes straight into the engine's input buffer when the
        engine has one (no hand-over copy)."""
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
        return {
            "task": self.task,
            "detections": result["detections"],
            "classes": result["classes"],
            "timings_ms": timer.ms,
        }


def _fill(fill: str, geom) -> tuple:
    """An extra input's value: `im_shape` the model-input size, `scale_factor` 1."""
    return (geom.in_h, geom.in_w) if fill == "im_shape" else (1.0, 1.0)


def load_model(path: str, target: str | None = None, options: dict | None = None, isolated: bool = False,
               engine: str | None = None, precision: str | None = None) -> Model:
    """Validate the bundle at `path`, then load and warm up its model."""
    return Model(load_bundle(path), target, options, isolated=isolated, engine=engine, precision=precision)
