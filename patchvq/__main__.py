"""`python -m patchvq ...`: the command line (see patchvq.cli.main)."""

import sys

from patchvq.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
