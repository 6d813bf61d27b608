"""Sample from a trained pararnn model: ``python generate.py --workdir runs/tiny`` (see --help)."""

import sys

from pararnn.train.generate_cli import main

if __name__ == "__main__":
    sys.exit(main())
