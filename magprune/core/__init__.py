"""nn.Module in, numbers or files out: networks, BatchNorm folding, pruning, accounting, quantisation, filter removal, export, files. No Lightning."""
