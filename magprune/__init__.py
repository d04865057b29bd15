"""Magnitude pruning of image classifiers: the library under the experiment's five files.

    core/    nn.Module in, numbers or files out (no Lightning): networks, pruning, accounting, export, files
    sweep/   the engine: its settings, one level's test, the searches (which levels), the store of rows, the ranks
    report/  what a finished sweep becomes: the summary, console tables, plots, mask pictures, TensorBoard

Lower layers never import higher ones, and nothing here imports the experiment's files
(`lightning_module.py`, `datamodule.py`, ...): what the engine needs of them is handed to it.
"""
