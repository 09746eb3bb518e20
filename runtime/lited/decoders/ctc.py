"""CTC text recognition (PP-OCR rec, CRNN/SVTR): `[1, T, K]` -> one line of text.

K = 1 + len(keys) + (1 if `use_space_char`): index 0 (`blank_index`) is the
CTC blank, then the keys file in order, then " " (PaddleOCR's
`use_space_char`). Greedy decode as PaddleOCR's and rapidocr's
`CTCLabelDecode`: per time step the arg max; drop a step equal to the one
before it, then the blanks; the score is the mean of the kept steps' maxima
(0 when nothing is kept). Unlike rapidocr, leading and trailing spaces are
stripped by default (`strip`): a crop's margins often read as " ".
Every PP-OCR export ends in a softmax; `apply_softmax` is for a model that
ends in logits (the scores become probabilities, the text is the same).

The labels are the keys file, one key a line, kept as they are: PP-OCR's
ppocr_keys_v1 has a line that is U+3000 (ideographic space), which a
reader dropping blank-looking lines would lose, shifting every later key.
`num_classes` is K - 1 - use_space_char, and the load-time check refuses
a keys file of any other length (EXACT_LABELS): one line too few or too
many shifts every character read.

The result is `{"detections": [], "classes": [], "text", "text_score"}`; as a
cascade stage, `text` and `text_score` are added to each detection.
"""
from __future__ import annotations

import math
import unicodedata
from typing import List, Optional, Tuple

import numpy as np

from ..geometry import Geometry
from .base import Decoder, shapes

NORMAL_FORMS = ("NFC", "NFKC", "NFD", "NFKD")


class CtcDecoder(Decoder):
    kind = "ctc"
    TASK = "text_recognition"
    PARAMS = {
        "use_space_char": (bool, True),   # a " " class after the keys (PP-OCR default)
        "blank_index": (int, 0),          # where the CTC blank is (PP-OCR: 0)
        "apply_softmax": (bool, False),   # the model ends in logits
        "min_score": (float, 0.0),        # below it, text is "" (rapidocr drops lines under 0.5)
        "normalize": (str, ""),           # "" or a unicodedata form, e.g. "NFKC": full-width （ -> (
        "strip": (bool, True),            # drop leading/trailing spaces (margins of a crop read as " ")
    }
    ADDS = ("text", "text_score")

    @classmethod
    def problems(cls, params: dict) -> List[Tuple[str, str]]:
        form = params.get("normalize", "")
        if form and form not in NORMAL_FORMS:
            return [("normalize", f"expected \"\" or one of {', '.join(NORMAL_FORMS)}, got {form!r}")]
        if params.get("blank_index", 0) < 0:
            return [("blank_index", "expected 0 or more")]
        return []

    def __init__(self, params: dict, labels: List[str]) -> None:
        super().__init__(params, labels)
        chars = list(self.labels) + ([" "] if self.use_space_char else [])
        chars.insert(self.blank_index, "")  # the blank decodes to nothing
        if self.normalize:
            if self.normalize not in NORMAL_FORMS:
                raise ValueError(f"normalize: {self.normalize!r} (expected one of {', '.join(NORMAL_FORMS)})")
            chars = [unicodedata.normalize(self.normalize, c) for c in chars]  # once, not per line
        self._chars = np.array(chars, dtype=object)

    EXACT_LABELS = True
    CLASSES_ARE = " (K = the blank, one class a key, and the space when use_space_char is true)"

    def num_classes(self, outputs: List[np.ndarray]) -> Optional[int]:
        """Keys the output expects (K minus the blank and the space)."""
        return int(outputs[0].shape[-1]) - 1 - int(self.use_space_char)

    def layout_problem(self, outputs: List[np.ndarray]) -> Optional[str]:
        """A classifier's [N, C] decoded as text read "" for every crop, with no word of why."""
        probs = outputs[0]
        if probs.ndim != 3 or self.num_classes(outputs) < 1:
            return f"outputs {shapes(outputs)}: the first is not [N, T, K] (K: the blank, the keys" \
                   f"{', the space' if self.use_space_char else ''})"
        return None

    def decode(self, outputs: List[np.ndarray], geom: Optional[Geometry] = None) -> dict:
        probs = outputs[0]
        probs = probs.reshape(-1, probs.shape[-1])  # [T, K] (batch 1)
        if self.apply_softmax:
            e = np.exp(probs - probs.max(axis=1, keepdims=True))
            probs = e / e.sum(axis=1, keepdims=True)
        idx = probs.argmax(axis=1)
        best = probs[np.arange(idx.size), idx]
        keep = np.ones(idx.size, dtype=bool)
        keep[1:] = idx[1:] != idx[:-1]
        keep &= idx != self.blank_index
        kept = idx[keep]
        if kept.size and int(kept.max()) >= self._chars.size:
            raise ValueError(f"the model read class {int(kept.max())}, past the {self._chars.size} classes of the "
                             f"blank, {len(self.labels)} keys{' and the space' if self.use_space_char else ''}: "
                             "the keys file (or use_space_char) does not match the model")
        score = float(best[keep].mean()) if kept.size else 0.0
        if not math.isfinite(score):  # argmax takes a NaN for the best: the text would go out scored NaN
            raise ValueError(f"{score} where the model scored a character "
                             "(a precision that overflows, e.g. f16, or a broken model)")
        text = "".join(self._chars[kept].tolist())
        if self.strip:
            text = text.strip(" ")
        if score < self.min_score:
            text = ""
        return {"detections": [], "classes": [], "text": text, "text_score": score}
