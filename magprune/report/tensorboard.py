"""The sweep in TensorBoard: one run per curve, all with the same tags, so one chart overlays them.

    output_dir/                 figures, mask images, weight histograms, the chart layout and a note
    output_dir/layerwise/       sweep/test_acc, sweep/test_loss, sweep/sparsity, storage/... per level
    output_dir/global+BN/       the same tags for the next curve, and so on

Steps are the sparsity in tenths of a percent (375 is 37.5%), fine enough to keep apart the levels
a bisection tests (`SweepConfig` refuses levels closer than that). The Custom Scalars tab opens on
accuracy against sparsity with every curve in one chart; the HParams tab lists each curve's method,
recovery and knee beside the sweep's settings. TensorBoard smooths scalars by default, which bends
an accuracy curve: set Smoothing to 0, or open http://localhost:6006/#custom_scalars&_smoothingWeight=0.
"""
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard.summary import hparams as hparams_summary

from magprune.sweep.config import sparsity_step

READER_NOTE = ("Each curve (method + recovery) is a run of its own: select runs on the left. The step is the "
               "sparsity in tenths of a percent: 500 is 50%. Set **Smoothing to 0** in the Scalars tab; the default bends the curves. "
               "Custom Scalars shows every curve in one chart.")
LAYOUT = {
    "sweep": {
        "test accuracy (%) against sparsity (step = 0.1%)": ["Multiline", [r"sweep/test_acc$"]],
        "test loss against sparsity (step = 0.1%)": ["Multiline", [r"sweep/test_loss$"]],
        "achieved sparsity (%)": ["Multiline", [r"sweep/sparsity$"]],
        "epochs of retraining spent to reach each level": ["Multiline", [r"sweep/retrain_epochs$"]],
    },
    "storage": {
        "bitmask + float32 bytes": ["Multiline", [r"storage/bitmask_bytes$"]],
        "FLOPs per image, as a sparse kernel would do them": ["Multiline", [r"storage/flops_sparse$"]],
    },
}


def scalar_config(config: dict) -> dict:
    """The settings HParams can show: numbers, strings and booleans; lists as text."""
    shown = {}
    for key, value in config.items():
        if isinstance(value, (list, tuple)):
            value = ",".join(str(item) for item in value)
        shown[key] = "none" if value is None else value
    return shown


def log_sweep(out_dir: str, rows: list[dict], summary: dict, config: dict, figures: dict, root) -> None:
    """Write every curve's run, and the figures, layout and note into the sweep's own run `root` (a SummaryWriter)."""
    curves = dict.fromkeys(row["curve"] for row in rows)
    for curve in curves:
        run = TensorBoardLogger(save_dir=out_dir, name="", version=curve)
        points = sorted((row for row in rows if row["curve"] == curve), key=lambda row: row["sparsity"])
        for row in points:
            metrics = {"sweep/test_acc": row["test_acc"], "sweep/test_loss": row["test_loss"],
                       "sweep/sparsity": 100 * row["achieved_sparsity"], "sweep/retrain_epochs": row.get("retrain_epochs", 0)}
            metrics.update({f"storage/{key}": row[key] for key in ("bitmask_bytes", "flops_sparse") if key in row})
            run.log_metrics(metrics, step=sparsity_step(row["sparsity"]))
        knee = summary["knees"][curve]
        knee_percent = -1.0 if knee["sparsity"] is None else 100 * knee["achieved_sparsity"]
        run.log_metrics({"knee/sparsity": knee_percent}, step=0)
        first = points[0]
        settings = {"curve": curve, "method": first["method"], "recovery": first["recovery"], **scalar_config(config)}
        for summary_proto in hparams_summary(settings, {"knee/sparsity": knee_percent}):
            run.experiment.file_writer.add_summary(summary_proto)
        run.finalize("success")

    root.add_custom_scalars(LAYOUT)
    root.add_text("how to read this sweep", READER_NOTE)
    for tag, figure in figures.items():
        root.add_figure(tag, figure)  # closes it, so long sessions do not pile up figures
    root.flush()
