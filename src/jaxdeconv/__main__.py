"""``python -m jaxdeconv <command>``: the same as the ``jaxdeconv`` console script."""

import sys

from .tools.cli import main

if __name__ == "__main__":
    sys.exit(main())
