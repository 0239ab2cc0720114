"""``python -m fewclip`` (what ``torchrun -m fewclip run CONFIG`` starts on every rank)."""

import sys

from fewclip.runner.cli import main

if __name__ == "__main__":
    sys.exit(main())
