"""The model a sweep starts from: a checkpoint of this project, a plain state dict, or a .ptz export."""
import hashlib
import inspect
from pathlib import Path

import torch

from cli import UsageError
from datamodule import CIFAR10_MEAN, CIFAR10_STD
from export import load_compact
from files import read_torch_file, strip_wrapper_prefixes
from lightning_module import ImageClassifier
from models import ARCHS
from pruning import restore_masks


def weights_digest(network: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer, names included: the same weights give the same digest,
    whichever file (a training checkpoint, its slim copy) they came from."""
    digest = hashlib.sha256()
    for name, tensor in network.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def newest_checkpoint(root: Path = Path("checkpoints")) -> Path:
    """The newest best-by-validation checkpoint under `root`, else the newest checkpoint of any name."""
    for pattern in ("**/best*.ckpt", "**/*.ckpt"):
        found = sorted(root.glob(pattern), key=lambda path: path.stat().st_mtime)
        if found:
            return found[-1]
    raise UsageError(f"no checkpoint under {root}/; train one with train.py or pass --checkpoint")


def load_checkpoint(path: Path) -> tuple[ImageClassifier, dict]:
    """The model and the datamodule's hyper-parameters from a Lightning checkpoint of this project."""
    checkpoint = read_torch_file(path, "checkpoint")
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise UsageError(f"{path} is not a Lightning checkpoint; for a plain state dict use --weights with --arch")
    hparams = dict(checkpoint["hyper_parameters"])
    if hparams.get("arch") not in ARCHS:
        raise UsageError(f"{path} was not written by this project's train.py (no known 'arch' hyper-parameter)")
    # Settings of older versions of this project that no longer exist (such as fold_batchnorm) are dropped.
    known = inspect.signature(ImageClassifier.__init__).parameters
    model = ImageClassifier(**{key: value for key, value in hparams.items() if key in known})
    restore_masks(model, checkpoint["state_dict"])
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except (RuntimeError, KeyError, TypeError) as error:
        raise UsageError(f"{path} does not match its architecture: {str(error).splitlines()[0]}") from None
    return model, dict(checkpoint.get("datamodule_hyper_parameters", {}))


def load_weights(path: Path, arch: str | None) -> tuple[ImageClassifier, dict]:
    """A plain state dict (optionally under 'state_dict', names optionally wrapped), or a .ptz export.

    Returns the model and what the file says of its inputs (a .ptz export's mean and std).
    """
    if arch is None:
        raise UsageError("--weights needs --arch to know which network the weights belong to")
    extra = {}
    if path.suffix == ".ptz" and path.is_file():
        try:
            state_dict, extra = load_compact(path)
        except Exception as error:  # a damaged export fails in zlib, pickle or torch
            raise UsageError(f"{path} cannot be read as a compact export ({type(error).__name__})") from None
    else:
        weights = read_torch_file(path, "weights file")
        state_dict = weights.get("state_dict", weights) if isinstance(weights, dict) else None
    if not isinstance(state_dict, dict) or not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise UsageError(f"{path} holds no state dict")
    model = ImageClassifier(arch=arch)
    try:
        model.model.load_state_dict(strip_wrapper_prefixes(state_dict))
    except RuntimeError as error:
        raise UsageError(f"{path} does not fit --arch {arch}: {str(error).splitlines()[0]}") from None
    return model, {"mean": tuple(extra.get("mean", CIFAR10_MEAN)), "std": tuple(extra.get("std", CIFAR10_STD))}
