"""The real inputs a bench run measures on, shaped for each scenario and the same for every
variant: single examples (single-stream, server), batches of real sentences (offline), one
long real text cut to each length (sweep)."""

from __future__ import annotations

import numpy as np

from ..artifact import Artifact
from ..data import concat_padded, examples_for, stdlib_sentences


class BenchInputs:
    """Real inputs shaped for each scenario, the same for every variant."""

    def __init__(self, reference: Artifact, data: str | None, longest: int | None = None):
        """``longest``: where every variant's text is cut (``shared_text_length``)."""
        from ..runtime.processing import TextProcessor

        self.examples = examples_for(reference, data, role="eval", batch_size=1, longest=longest)
        processing = reference.manifest.processing
        self.text = TextProcessor.from_artifact(reference, longest=longest) if processing.get("tokenizer") else None
        self.max_length = self.text.max_length if self.text else int(processing.get("max_length", 512))
        self.sentences = stdlib_sentences(64) if data is None and self.text is not None else None
        self._long: dict | None = None

    def single(self) -> list[dict]:
        return list(self.examples.batches)

    def batch(self, size: int) -> dict:
        """``size`` rows exactly: real sentences (or examples) repeated as needed."""
        if self.sentences is not None:
            return self.text.encode([self.sentences[i % len(self.sentences)] for i in range(size)])
        rows = self.examples.batches
        picked = [rows[i % len(rows)] for i in range(size)]
        return {k: concat_padded([p[k] for p in picked]) for k in picked[0]}

    def of_length(self, size: int, length: int) -> dict | None:
        if self.text is None:
            return None
        length = min(length, self.max_length)
        if self._long is None:   # real prose, tokenized once and cut to each length
            self._long = self.text.encode([" ".join(stdlib_sentences(120))])
        return {k: np.ascontiguousarray(np.repeat(v[:, :length], size, axis=0)) for k, v in self._long.items()}
