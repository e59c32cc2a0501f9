"""``python -m edgeport.cli``: the same command line as the ``edgeport`` script."""

from . import main

main()
