"""``python -m aetk.cli``: the ``aetk`` console script."""

import sys

from aetk.cli import main

if __name__ == "__main__":
    sys.exit(main())
