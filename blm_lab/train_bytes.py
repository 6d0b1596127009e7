"""Train a BytesGPT on raw bytes: ``python -m blm_lab.train_bytes DATASET [flags]`` (the same as ``blm-lab train``).

The flags are derived from the fields of BytesGPTConfig and TrainConfig (``training.config.
add_train_arguments``), so they cannot drift from what they set; each is accepted with dashes or
underscores (``--n-layer`` and ``--n_layer``). The model and optimiser settings default to the tuned
recipe (``gpu`` on CUDA, ``cpu`` elsewhere; ``--recipe baseline`` for blm_lab 0.1's), and ``--help`` lists
each recipe's values. Multi-GPU / multi-node:
``torchrun --nproc_per_node N -m blm_lab.train_bytes DATASET ...``.
"""

from __future__ import annotations

import argparse
import sys

from .errors import exit_status
from .training.config import TRAIN_DESCRIPTION, TRAIN_INTERRUPTED, add_train_arguments


def build_parser() -> argparse.ArgumentParser:
    return add_train_arguments(argparse.ArgumentParser(prog="python -m blm_lab.train_bytes",
                                                       description=TRAIN_DESCRIPTION))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .training.loop import run_from_args  # torch: after parsing, so that --help stays fast

    return exit_status(lambda: run_from_args(args), TRAIN_INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
