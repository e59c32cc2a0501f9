"""Regenerate ``edgeport/resources/stdlib_sentences.txt``: English sentences from the
docstrings of standard-library modules, the real text edgeport calibrates and checks with.

    python tools/build_stdlib_sentences.py > edgeport/resources/stdlib_sentences.txt

Run it in a fresh interpreter: test runners and other tools patch standard-library
objects, which changes what it finds; that is why the result is shipped as a file.
"""

from __future__ import annotations

import importlib
import inspect
import re

DOC_MODULES = (
    "argparse", "asyncio", "bisect", "calendar", "collections", "configparser", "contextlib",
    "csv", "dataclasses", "datetime", "decimal", "difflib", "email.message", "fractions",
    "ftplib", "functools", "gettext", "glob", "gzip", "heapq", "hmac", "http.client",
    "imaplib", "inspect", "ipaddress", "itertools", "json", "logging", "mailbox",
    "multiprocessing.pool", "numbers", "operator", "optparse", "os", "pathlib", "pickle",
    "pprint", "queue", "random", "re", "shlex", "shutil", "smtplib", "socket", "statistics",
    "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit",
    "tokenize", "traceback", "typing", "unittest.case", "urllib.parse", "uuid", "warnings",
    "weakref", "zipfile",
)
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def docstring_sentences() -> list[str]:
    seen: dict[str, None] = {}
    for module_name in DOC_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        docs = [inspect.getdoc(module)]
        for name in sorted(vars(module)):
            if not name.startswith("_"):
                docs.append(inspect.getdoc(getattr(module, name)))
        for doc in docs:
            if not doc:
                continue
            for paragraph in doc.split("\n\n"):
                text = " ".join(paragraph.split())
                for sentence in SENTENCE_END.split(text):
                    if 30 <= len(sentence) <= 400 and sentence[0].isalpha() and ">>>" not in sentence:
                        seen.setdefault(sentence, None)
    return list(seen)


if __name__ == "__main__":
    print("\n".join(docstring_sentences()))
