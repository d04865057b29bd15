"""Cut a training checkpoint down to what a sweep needs, for shipping: weights, buffers, hyper-parameters.

    python scripts/slim_checkpoint.py checkpoints/resnet20/version_0/best-epoch029-val_acc0.9000.ckpt \
        checkpoints/resnet20_cifar10jpeg.ckpt

Drops the optimizer, scheduler, loop and callback state (`--resume` needs them; a sweep does not) and
writes the data folder relative to the project root, so the file works in any clone.
"""
import argparse
import io
import os
from pathlib import Path

import torch

from magprune.core.io import atomic_write

KEPT = ("state_dict", "hyper_parameters", "datamodule_hyper_parameters", "pytorch-lightning_version", "epoch", "global_step")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", help="a checkpoint written by train.py")
    parser.add_argument("target", help="where the slim copy goes")
    args = parser.parse_args(argv)
    checkpoint = torch.load(args.source, map_location="cpu", weights_only=True)
    slim = {key: checkpoint[key] for key in KEPT if key in checkpoint}
    data = slim.get("datamodule_hyper_parameters", {})
    root = Path(__file__).resolve().parents[1]
    if "data_dir" in data and Path(data["data_dir"]).is_absolute():
        data["data_dir"] = os.path.relpath(data["data_dir"], root)
    buffer = io.BytesIO()
    torch.save(slim, buffer)
    atomic_write(Path(args.target), buffer.getvalue())
    print(f"{args.target}: {len(buffer.getvalue()) / 1e6:.2f} MB, epoch {slim.get('epoch')}")


if __name__ == "__main__":
    main()
