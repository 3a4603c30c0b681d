"""`python -m train dcae|dit ...` (and `torchrun -m train ...`): the `songmill train` commands."""

import sys

from train.cli import main

if __name__ == "__main__":
    sys.exit(main())
