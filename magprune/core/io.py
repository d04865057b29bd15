"""Reading the torch files users point the project at, and writing results, safely.

Read: every torch file goes through `torch.load(weights_only=True)`, so a file from elsewhere can
hold tensors and plain containers but cannot run code; one that needs more is refused with a
reason. Written: through a temporary name in the same folder, then renamed, so an interrupted run
leaves the previous file or the new one, never half of either.
"""
import contextlib
import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from magprune.errors import InputError

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
    except OSError as error:
        with contextlib.suppress(OSError):  # a folder gone read-only may refuse even this
            temporary.unlink(missing_ok=True)
        # Named by the file meant, not its temporary: the previous `path`, if any, is still whole.
        raise OSError(error.errno, error.strerror or str(error), str(path)) from error
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def read_torch_file(path: Path, what: str):
    """`torch.load` with weights_only=True, every failure one InputError that says what went wrong."""
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder, not a file")
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" in str(error):
            raise InputError(f"{what} {path} holds Python objects beyond tensors and plain containers, which could run "
                             "code when loaded; it is refused (re-save its state_dict with torch.save)") from None
        raise InputError(f"{what} {path} cannot be read (UnpicklingError); is it complete?") from None
    except Exception as error:  # torch.load raises many types for truncated or foreign files
        raise InputError(f"{what} {path} cannot be read ({type(error).__name__}); is it complete?") from None


def strip_wrapper_prefixes(state_dict: dict) -> dict:
    """Network parameter names without the prefixes that wrappers add."""
    stripped = {}
    for key, value in state_dict.items():
        for prefix in WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        stripped[key] = value
    return stripped


def read_checkpoint(path: Path) -> dict:
    """A Lightning checkpoint's contents, refused unless it holds a state dict and hyper-parameters."""
    checkpoint = read_torch_file(path, "checkpoint")
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise InputError(f"{path} is not a Lightning checkpoint (no state_dict and hyper_parameters); "
                         "a plain state dict is read as weights, with the architecture named")
    return checkpoint


def newest_checkpoint(root: Path = Path("checkpoints")) -> Path | None:
    """The newest best-by-validation checkpoint under `root`, else the newest checkpoint of any name; None if there is none."""
    for pattern in ("**/best*.ckpt", "**/*.ckpt"):
        found = sorted(root.glob(pattern), key=lambda path: path.stat().st_mtime)
        if found:
            return found[-1]
    return None


def weights_digest(network: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer, names included: the same weights give the same digest,
    whichever file (a training checkpoint, its slim copy) they came from."""
    digest = hashlib.sha256()
    for name, tensor in network.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def answers_path(out_dir: Path, curve: str, sparsity: float, seed: int) -> Path:
    """Where a results folder keeps which test images one seed of a row answered correctly."""
    return out_dir / "answers" / curve / f"{sparsity:g}-seed{seed}.bits"


def write_answers(path: Path, hits) -> None:
    """A bool per test image, as bits (1,250 bytes for 10,000 images), written whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, np.packbits(np.asarray(hits, dtype=bool)).tobytes())


def read_answers(path: Path, images: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(path.read_bytes(), dtype=np.uint8))[:images].astype(bool)
