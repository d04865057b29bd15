"""What the two entry points share: one-line errors for bad input instead of tracebacks, and flag conversions."""
import argparse
import sys
from functools import wraps

import torch


class UsageError(Exception):
    """Bad input the user can fix; the message says how."""


def one_line_errors(main):
    """Run `main`, turning a UsageError into `error: ...` on stderr and exit status 2."""

    @wraps(main)
    def run(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UsageError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted; finished results and checkpoints are kept", file=sys.stderr)
            sys.exit(130)

    return run


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr, like every other input error."""

    def error(self, message):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def lightning_limit(value: float | None) -> int | float | None:
    """A --limit_*_batches flag as Lightning reads it: up to 1.0 a fraction, above it a whole number of batches."""
    if value is None:
        return None
    return int(value) if value > 1 else value


def resolve_gpus(gpus: int | None) -> int:
    """--gpus as given, or when left out one GPU if there is one and the CPU otherwise."""
    if gpus is None:
        return 1 if torch.cuda.is_available() else 0
    return gpus


def device_line(gpus: int) -> str:
    """The first line of a run: which device it computes on."""
    if gpus:
        return f"device: {gpus} x {torch.cuda.get_device_name(0)} (CUDA)"
    return f"device: CPU, {torch.get_num_threads()} threads (--gpus 0; with a GPU, --gpus 1)"
