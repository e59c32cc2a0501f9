"""``python -m edgeport``: the command line, as the ``edgeport`` script."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="edgeport")
