"""``python -m neuroseg ...``: the same command line as the ``neuroseg`` console script."""

import sys

from neuroseg.cli import main

if __name__ == "__main__":
    sys.exit(main())
