"""``python -m snncc`` (and ``torchrun ... -m snncc run ...``): the ``snncc`` command line."""

from snncc.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
