"""What the entry points share: one line and an exit status for every failure a user can act on, and flag conversions.

Exit status 2: bad input (a flag, a file, a folder in use), nothing done. 130: interrupted (Ctrl-C);
what was finished is kept. 1: the run failed on the way (a disk full or a folder no longer writable);
what was finished is kept. A traceback means a bug.
"""
import argparse
import errno
import sys
import threading
from functools import wraps
from typing import Any, Callable

import torch

from magprune.errors import InputError, SettingError


class UsageError(InputError):
    """A flag the user can fix; the message names it and says how."""


class Interrupted(Exception):
    """The user stopped the run (Ctrl-C); the message says what was kept and how to go on."""


class Failed(Exception):
    """The run could not go on (a disk full, a folder gone read-only); the message says what was kept."""


# The errors of a file system the user can fix: space, quota, permissions, a read-only mount.
STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def is_interrupt(error: BaseException) -> bool:
    """Ctrl-C, or Lightning's `sys.exit(1)` after it caught Ctrl-C inside fit or test."""
    return isinstance(error, KeyboardInterrupt) or (isinstance(error, SystemExit) and isinstance(error.__context__, KeyboardInterrupt))


def is_storage_error(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in STORAGE_ERRORS


def quiet_storage_errors_in_threads() -> None:
    """A background writer (TensorBoard's) that hits a full disk prints a traceback from its thread; the writer
    raises the same error again in the main thread at its next write, which makes it one line. Others are printed."""
    default = threading.excepthook

    def hook(arguments):
        if not is_storage_error(arguments.exc_value):
            default(arguments)

    threading.excepthook = hook


def one_line_errors(main):
    """Run `main`, turning each failure a user can act on into one line on stderr and its exit status (see above)."""

    @wraps(main)
    def run(*args, **kwargs):
        quiet_storage_errors_in_threads()
        try:
            return main(*args, **kwargs)
        except SettingError as error:
            stop(f"error: --{error.name}: {error.message}", 2)
        except InputError as error:
            stop(f"error: {error}", 2)
        except Interrupted as error:
            stop(f"interrupted: {error}", 130)
        except Failed as error:
            stop(f"error: {error}", 1)
        except OSError as error:
            if not is_storage_error(error):
                raise
            stop(f"error: {error.strerror}: {error.filename}", 1)
        except (KeyboardInterrupt, SystemExit) as error:
            if not is_interrupt(error):
                raise
            stop("interrupted; finished results and checkpoints are kept", 130)

    return run


def stop(line: str, status: int):
    print(line, file=sys.stderr)
    sys.exit(status)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr, like every other input error."""

    def error(self, message):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def flag_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """`parse` (a flag's text to its value, a ValueError saying what is wrong) as an argparse type that keeps the message."""
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    convert.__name__ = parse.__name__
    return convert


def resolve_gpus(gpus: int | None) -> int:
    """--gpus as given, or when left out one GPU if there is one and the CPU otherwise."""
    if gpus is None:
        return 1 if torch.cuda.is_available() else 0
    return gpus


NATIVE_BF16 = {"amx_bf16", "avx512_bf16"}  # CPU flags with which oneDNN runs bfloat16 convolutions natively


def cpu_runs_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes in bfloat16 natively (AMX or AVX512-BF16), as /proc/cpuinfo's flags say."""
    try:
        with open(cpuinfo) as lines:
            flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    except OSError:
        return False
    return bool(NATIVE_BF16 & set(flags))


def resolve_retrain_precision(precision: str | None, gpus: int) -> str:
    """--retrain_precision as given; or bf16-mixed on a CPU that runs bfloat16 natively (measured: 1.65x faster per
    epoch of ResNet-20 on an AVX512-BF16 EPYC, bench/retrain_speed.py), else 32-true (a GPU's choice is not measured)."""
    if precision is not None:
        return precision
    return "bf16-mixed" if not gpus and cpu_runs_bf16() else "32-true"


def device_line(gpus: int) -> str:
    """The first line of a run: which device it computes on."""
    if gpus:
        return f"device: {gpus} x {torch.cuda.get_device_name(0)} (CUDA)"
    threads = torch.get_num_threads()
    return f"device: CPU, {threads} thread{'s' if threads > 1 else ''} (--gpus 0; with a GPU, --gpus 1)"
