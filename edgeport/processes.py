"""Python child processes that import only what is installed: ``python -m`` and ``python -c``
put the current folder first on ``sys.path``, so a ``keras.py``, ``numpy.py`` or ``triton/``
there (``package --format triton -o triton`` makes one) would be imported instead of the real
module, or run as code.  (``-P`` does this from Python 3.11; edgeport supports 3.10.)"""

from __future__ import annotations

import sys

_DROP_CWD = "import sys\nif sys.path and sys.path[0] == '':\n    del sys.path[0]\n"


def python_module(module: str, *args) -> list[str]:
    """The command line of ``python -m module args`` without the current folder on sys.path."""
    code = _DROP_CWD + f"import runpy\nrunpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
    return [sys.executable, "-c", code, *map(str, args)]


def python_code(code: str, *args) -> list[str]:
    """The command line of ``python -c code args`` without the current folder on sys.path."""
    return [sys.executable, "-c", _DROP_CWD + code, *map(str, args)]
