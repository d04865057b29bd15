"""How each registry entry looks in every figure: a colour per pruning method, a line style per recovery, a line
style and a marker per retraining, a marker per bit width. An entry without a style here is drawn in the next
colour of matplotlib's cycle, solid, with circles: a new method plots before anyone picks its colour."""
from magprune.core.pruning import METHODS

METHOD_COLOURS = {
    "layerwise": "tab:blue", "global": "tab:orange", "random": "tab:green", "filters": "tab:red", "2:4": "tab:purple",
    "lamp": "tab:brown", "obs-layerwise": "tab:cyan", "obs-global": "tab:olive", "obs-lamp": "tab:pink", "obs-2:4": "tab:gray",
}
RECOVERY_LINES = {"none": "-", "bn": "--", "finetune": ":"}
# A chain of one step is a point, not a line: its marker tells the retraining apart.
RETRAINING_LINES = {"finetune": ("-.", "v"), "lr_rewind": ((0, (5, 1)), "<"), "lr_restart": ((0, (1, 1)), ">"),
                    "weight_rewind": ((0, (3, 1, 1, 1)), "D"), "init_reset": ((0, (3, 1, 1, 1, 1, 1)), "P"),
                    "random_reinit": ((0, (8, 2)), "X")}
QUANTIZE_MARKERS = {0: "o", 8: "s", 4: "^"}  # float32 weights, 8 bits, 4 bits


def method_colour(method: str | None) -> str | None:
    """Its colour; a method unknown here takes the colour of its place in METHODS; one not in METHODS, the axes' next."""
    if method in METHOD_COLOURS:
        return METHOD_COLOURS[method]
    return f"C{list(METHODS).index(method) % 10}" if method in METHODS else None
