"""Real text from domains unlike the standard-library docstrings edgeport calibrates on, for
measuring how an INT8 model holds up on text it has never seen.  Nothing is downloaded:

- ``docstrings``: the bundled docstring sentences (the evaluation split, never calibrated on);
- ``legal``: licence texts Debian ships in /usr/share/common-licenses (every Debian system
  has them, through base-files);
- ``science``: scikit-learn's descriptions of its bundled data sets (medicine, botany,
  chemistry, census statistics).
"""

from __future__ import annotations

import random
import re
from functools import lru_cache
from pathlib import Path

from ..errors import CalibrationDataError
from .bundled import stdlib_sentences

DOMAINS = ("docstrings", "legal", "science")
LICENSES = Path("/usr/share/common-licenses")
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+(?=[A-Z(\"'])")


def _sentences(text: str) -> list[str]:
    found = []
    for paragraph in re.split(r"\n\s*\n", text):
        flat = " ".join(paragraph.split())
        for sentence in _SENTENCE_END.split(flat):
            letters = sum(c.isalpha() for c in sentence)
            if 40 <= len(sentence) <= 400 and letters > 0.6 * len(sentence) and sentence[0].isalpha():
                found.append(sentence)
    return found


@lru_cache(maxsize=None)
def _pool(domain: str) -> tuple[str, ...]:
    if domain == "legal":
        files = sorted(p for p in LICENSES.glob("*") if p.is_file()) if LICENSES.is_dir() else []
    elif domain == "science":
        from importlib import resources

        descr = resources.files("sklearn.datasets") / "descr"
        files = sorted((p for p in descr.iterdir() if p.name.endswith(".rst")), key=lambda p: p.name)
    else:
        raise ValueError(domain)
    seen: dict[str, None] = {}
    for file in files:
        for sentence in _sentences(file.read_text(encoding="utf-8", errors="replace")):
            if not re.search(r"[=\-*_]{4,}|\|.*\||https?://|\.\. ", sentence):    # no rst tables, rules, links
                seen.setdefault(sentence, None)
    pool = list(seen)
    random.Random(0).shuffle(pool)
    return tuple(pool)


def domain_sentences(domain: str, count: int) -> list[str]:
    """``count`` sentences of ``domain`` (deterministic)."""
    if domain not in DOMAINS:
        raise CalibrationDataError(f"unknown text domain '{domain}'; choose from {', '.join(DOMAINS)}")
    if domain == "docstrings":
        return stdlib_sentences(count, split="eval")
    pool = _pool(domain)
    if len(pool) < count:
        raise CalibrationDataError(f"only {len(pool)} '{domain}' sentences are available here (asked {count})"
                                   + ("; Debian's base-files provides /usr/share/common-licenses"
                                      if domain == "legal" else ""))
    return list(pool[:count])
