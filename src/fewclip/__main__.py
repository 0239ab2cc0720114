"""``python -m fewclip`` (what ``torchrun -m fewclip run CONFIG`` starts on every rank)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
