"""Reading the torch files users point the project at, and writing results, safely.

Read: every torch file goes through `torch.load(weights_only=True)`, so a file from elsewhere can
hold tensors and plain containers but cannot run code; one that needs more is refused with a
reason. Written: through a temporary name in the same folder, then renamed, so an interrupted run
leaves the previous file or the new one, never half of either.
"""
import os
import pickle
from pathlib import Path

import torch

from cli import UsageError

# What wraps a network's names in the state dicts the project reads: DataParallel and DDP
# ("module."), this project's LightningModule ("model.").
WRAPPER_PREFIXES = ("module.", "model.")


def atomic_write(path: Path, data: str | bytes) -> None:
    """Replace `path` with `data` whole: a reader never sees half a file."""
    # A fixed temporary name rather than mkstemp's: mkstemp makes files only their owner can read.
    temporary = path.with_name(f".{path.name}.partial")
    try:
        with open(temporary, "wb" if isinstance(data, bytes) else "w", newline=None if isinstance(data, bytes) else "") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def read_torch_file(path: Path, what: str):
    """`torch.load` with weights_only=True, every failure one UsageError that says what went wrong."""
    if not path.is_file():
        raise UsageError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" in str(error):
            raise UsageError(f"{what} {path} holds Python objects beyond tensors and plain containers, which could run "
                             "code when loaded; it is refused (re-save its state_dict with torch.save)") from None
        raise UsageError(f"{what} {path} cannot be read (UnpicklingError); is it complete?") from None
    except Exception as error:  # torch.load raises many types for truncated or foreign files
        raise UsageError(f"{what} {path} cannot be read ({type(error).__name__}); is it complete?") from None


def strip_wrapper_prefixes(state_dict: dict) -> dict:
    """Network parameter names without the prefixes that wrappers add."""
    stripped = {}
    for key, value in state_dict.items():
        for prefix in WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        stripped[key] = value
    return stripped
