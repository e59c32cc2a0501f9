"""Real data that ships with edgeport and its dependencies, so parity and calibration never
need a download: English sentences from the Python standard library's docstrings, and
scikit-learn's handwritten digits."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

SENTENCES_FILE = Path(__file__).parent.parent / "resources" / "stdlib_sentences.txt"
SPLITS = ("eval", "calib")


@lru_cache(maxsize=1)
def _all_docstring_sentences() -> tuple[str, ...]:
    return tuple(line for line in SENTENCES_FILE.read_text(encoding="utf-8").splitlines() if line)


def sentences_per_split() -> int:
    """How many docstring sentences each split holds."""
    return len(_all_docstring_sentences()) // 2


def stdlib_sentences(count: int = 200, split: str = "eval") -> list[str]:
    """``count`` real English sentences from standard-library docstrings, deterministic.

    The pool is shuffled once with a fixed seed; ``split="eval"`` takes from the front and
    ``split="calib"`` from the back, so evaluation never sees calibration sentences.
    (tools/build_stdlib_sentences.py made the file.)
    """
    import random

    if split not in SPLITS:
        raise ValueError(f"split must be 'eval' or 'calib', not {split!r}")
    pool = list(_all_docstring_sentences())
    random.Random(0).shuffle(pool)
    if count > len(pool) // 2:
        raise ValueError(f"only {len(pool) // 2} docstring sentences are available per split")
    return pool[:count] if split == "eval" else pool[len(pool) - count:]


def digits_images(count: int | None = None, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled handwritten digits as float32 [N, 1, 8, 8] in [0, 1], and labels."""
    from ..errors import require

    datasets = require("sklearn.datasets", "quantize")
    digits = datasets.load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    end = None if count is None else offset + count
    return images[offset:end], labels[offset:end]


def generation_prompts(count: int = 8, words: int = 5, split: str = "eval") -> list[str]:
    """Real prompts for causal LMs: the opening words of docstring sentences, of varied length
    (``words`` to ``words + 3``), so batched generation meets ragged prompts."""
    sentences = stdlib_sentences(max(count * 3, 16), split=split)
    prompts = []
    for index, sentence in enumerate(sentences):
        cut = sentence.split()[:words + index % 4]
        if len(cut) >= 2:
            prompts.append(" ".join(cut))
        if len(prompts) == count:
            break
    return prompts
