"""Train a pararnn language model: ``python train.py --config tiny`` (see --help)."""

import sys

from pararnn.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
