"""What a sweep's rows answer: each accuracy's error, and the knee of each curve, exactly, with its range.

Accuracies are compared as integer counts (correct, total) and turned into percentages only to be
shown, so a level exactly `tolerance` points below dense is within it, whatever float rounding says.
Each accuracy carries its standard error (`test_acc_se`, in points); the knee's range is where the
knee could lie once each level's accuracy may be anywhere in its 95% interval (`margin95`).
"""
import math
import statistics
from fractions import Fraction

import numpy as np

Z95 = 1.959964  # standard errors either side of an accuracy that hold 95% of a normal distribution


def binomial_se(correct: int, total: int) -> float:
    """Standard error of an accuracy measured on `total` test images, in points: sqrt(p(1-p)/n).

    Each test image is a draw the network gets right with probability p; a different sample of
    the same size from the same distribution would move the accuracy by about this much.
    """
    accuracy = correct / total
    return 100 * math.sqrt(accuracy * (1 - accuracy) / total)


def seeded_accuracy(counts: list[tuple[int, int]]) -> dict:
    """One row's accuracy from K tests that differ only in the pruning seed, all on the same test images.

    The accuracy is the mean over seeds (the counts summed); its standard error adds the spread of
    the seeds' mean (sd / sqrt K) to the test images' own binomial error, which K tests of the same
    images do not shrink. `seed_sd` is the spread itself: how far one seed's mask may land.
    """
    correct, total = sum(count for count, _ in counts), sum(images for _, images in counts)
    row = {"correct": correct, "total": total, "test_acc": 100 * correct / total, "seeds": len(counts)}
    binomial = binomial_se(correct, total) * math.sqrt(len(counts))  # of one seed's n images, at the mean accuracy
    if len(counts) == 1:
        return {**row, "test_acc_se": binomial}
    spread = statistics.stdev(100 * count / images for count, images in counts)
    return {**row, "seed_sd": spread, "test_acc_se": math.sqrt(binomial ** 2 + spread ** 2 / len(counts))}


def mean_of_seeds(seeds: list[int], counts: list[tuple[int, int]], losses: list[float]) -> dict:
    """A row's accuracy from K tests that differ only in their seed (masks, or a retraining's batches): their mean and
    error (`seeded_accuracy`), the mean loss, which seeds, and with several each seed's own count."""
    row = {**seeded_accuracy(counts), "test_loss": sum(losses) / len(losses), "run_seeds": list(seeds)}
    if len(counts) > 1:
        row["seed_correct"] = [correct for correct, _ in counts]
    return row


def merge_models(documents: list[list[dict]]) -> list[dict]:
    """The rows of K sweeps of K trained models (same network, method, levels and test images) as one sweep.

    Each (curve, sparsity) every sweep tested becomes one row: its accuracy the mean over the models
    (their counts summed), its standard error the spread of the models' accuracies over sqrt K
    (`model_sd` is that spread: how far another training run may land) together with the binomial
    error of one model's test images, which K models tested on the same images do not shrink. A row
    that is itself a mean over pruning seeds brings its images once per seed; they count once.
    """
    keyed = [{(row["curve"], row["sparsity"]): row for row in rows} for rows in documents]
    merged = []
    for key, first in keyed[0].items():
        rows = [by_key[key] for by_key in keyed if key in by_key]
        if len(rows) < len(keyed):
            continue  # not tested on every model: its mean would mix models
        correct, total = sum(row["correct"] for row in rows), sum(row["total"] for row in rows)
        images = first["total"] // first.get("seeds", 1)
        accuracy = correct / total
        binomial = 100 * math.sqrt(accuracy * (1 - accuracy) / images)
        spread = statistics.stdev(100 * row["correct"] / row["total"] for row in rows) if len(rows) > 1 else 0.0
        merged.append({name: first[name] for name in ("curve", "method", "recovery", "quantize", "sparsity") if name in first}
                      | {"achieved_sparsity": statistics.mean(row["achieved_sparsity"] for row in rows),
                         "correct": correct, "total": total, "test_acc": 100 * accuracy, "models": len(rows),
                         "model_sd": spread, "test_acc_se": math.sqrt(binomial ** 2 + spread ** 2 / len(rows))})
    return merged


def margin95(row: dict) -> float:
    """Half-width of the row's 95% interval, in points.

    Where the error is the test images' alone (binomial over thousands of images), Z95 standard
    errors. Where part of it is the spread of K pruning seeds or K trained models, that spread is
    itself estimated from K values, so the interval is Student's t with the Welch-Satterthwaite
    degrees of freedom of the two parts (the binomial part counted as known): K-1 where the spread
    dominates (4.30 standard errors for K = 3), approaching Z95 where the test images' error does.
    """
    error = row.get("test_acc_se") or 0.0
    spread, draws = (row["model_sd"], row["models"]) if "model_sd" in row else (row.get("seed_sd", 0.0), row.get("seeds", 1))
    return _student_margin(error, spread, draws)


def _student_margin(error: float, spread: float, draws: int) -> float:
    """Half-width of a 95% interval whose standard error `error` holds the spread of `draws` values (estimated
    from them) and a part known exactly: Student's t with Welch-Satterthwaite degrees of freedom."""
    if draws < 2 or spread == 0:
        return Z95 * error
    # Imported here: only rows with a spread need it, and importing it takes about a second.
    from scipy.stats import t as student_t

    degrees = (draws - 1) * (error ** 2 / (spread ** 2 / draws)) ** 2
    return float(student_t.ppf(0.975, degrees)) * error


def is_dense(row: dict) -> bool:
    """The unpruned, unrecovered, float32 row: the reference every knee is measured against."""
    return row["sparsity"] == 0 and row["recovery"] == "none" and not row.get("quantize")


def dense_row(rows: list[dict]) -> dict | None:
    return next((row for row in rows if is_dense(row)), None)


def paired_drop(dense_hits, seed_hits: list) -> dict:
    """The drop from dense in points (dense minus pruned; positive is worse), measured image by image, and its 95% interval.

    `dense_hits` and each of `seed_hits` (one per seed of the row) say which of the same n test images a network
    answered correctly. Per image d_i = dense_i - (the seeds' mean answer); the drop is mean(d).
    One run: d_i is -1, 0 or 1, so the drop is (b - c) / n over the discordant images (b: dense right and pruned
    wrong, c: the reverse) and its standard error sqrt(b + c - (b - c)^2 / n) / n: the Wald interval of a paired
    difference of proportions, the interval McNemar's test inverts. Chosen over a paired bootstrap because it is
    arithmetic on two counts, the same every time, and with the tens to hundreds of discordant images a sweep's
    rows have the normal approximation holds (a bootstrap would reproduce it plus its own resampling noise).
    It is several times tighter than two independent binomial errors: both networks agree on most images.
    K seeds: the seeds' paired drops spread by sd_K, so their mean carries sd_K / sqrt(K) of training noise;
    the images' paired error sd(d) / sqrt(n), which K networks tested on the same images do not shrink, adds to it,
    and the interval is Student's t with the Welch-Satterthwaite degrees of freedom of the two, as in `margin95`
    (K - 1 where the seeds' spread dominates).
    """
    dense = np.asarray(dense_hits, dtype=np.float64)
    runs = np.stack([np.asarray(hits, dtype=np.float64) for hits in seed_hits])
    differences = dense - runs.mean(axis=0)
    images = differences.size
    drop = 100 * differences.mean()
    image_se = 100 * differences.std() / math.sqrt(images)
    result = {"paired_drop": drop, "paired_drop_se": image_se}
    if len(runs) > 1:
        seed_drops = 100 * (dense - runs).mean(axis=1)
        spread = float(np.std(seed_drops, ddof=1))
        result.update(seed_drops=[float(value) for value in seed_drops], paired_drop_se=math.sqrt(image_se ** 2 + spread ** 2 / len(runs)))
        margin = _student_margin(result["paired_drop_se"], spread, len(runs))
    else:
        result["discordant"] = int(np.count_nonzero(differences))
        margin = Z95 * image_se
    return {**result, "paired_drop_low": drop - margin, "paired_drop_high": drop + margin}


KNEE_RULES = {
    "point": "the level's accuracy (its point estimate) within the tolerance of dense",
    "confident": "the upper end of the 95% interval of its paired drop from dense within the tolerance",
}


def kept(row: dict, dense: dict, tolerance: float, rule: str = "point") -> bool:
    """Whether `row` counts as within `tolerance` of `dense` under the knee `rule` (KNEE_RULES).

    Under `confident`, a row without per-image answers (a sweep saved before they were kept) is judged on its
    unpaired 95% interval instead, which is wider: it errs toward not kept.
    """
    if rule == "point" or is_dense(row):
        return within_tolerance(row, dense, tolerance)
    if "paired_drop_high" in row:
        return row["paired_drop_high"] <= tolerance
    return 100 * dense["correct"] / dense["total"] - (row["test_acc"] - margin95(row)) <= tolerance


def within_tolerance(row: dict, dense: dict, tolerance: float) -> bool:
    """Exactly: correct/total >= dense_correct/dense_total - tolerance/100, in integer arithmetic.

    The tolerance is read as the decimal the user typed (1.0 is exactly one point), so a level
    exactly `tolerance` points below dense is within it.
    """
    points = Fraction(str(tolerance))
    return Fraction(row["correct"], row["total"]) * 100 >= Fraction(dense["correct"], dense["total"]) * 100 - points


def find_knees(rows: list[dict], dense: dict, tolerance: float, rule: str = "point") -> dict[str, dict | None]:
    """Per curve, the row of its knee: the largest level such that it and every level below it are within tolerance.

    Within tolerance as the knee `rule` says (`kept`). A curve that falls out of the tolerance and comes
    back (noise, or a level BatchNorm happens to suit) has its knee before the first level that fell out:
    "can go" means every smaller cut is safe too, which is also what bisection assumes. None where even
    the smallest level is outside.
    """
    knees = {}
    for curve in dict.fromkeys(row["curve"] for row in rows):
        knee = None
        for row in sorted((row for row in rows if row["curve"] == curve), key=lambda row: row["sparsity"]):
            if not kept(row, dense, tolerance, rule):
                break
            knee = row
        knees[curve] = knee
    return knees


def knee_ranges(rows: list[dict], dense: dict, tolerance: float) -> dict[str, tuple[float | None, float | None]]:
    """Per curve, the lowest and highest sparsity its knee could be once each accuracy is uncertain.

    Low: the knee if every level were at the bottom of its 95% interval; high: if every level were at
    its top. The dense network is the reference the tolerance is measured from, so it
    is within by definition. The rows share one set of test images, so a difference between two of
    them is surer than the two errors apart suggest: the range errs on the wide side.
    """
    ranges = {}
    for curve in dict.fromkeys(row["curve"] for row in rows):
        bounds = []
        for direction in (-1, 1):
            knee = None
            for row in sorted((row for row in rows if row["curve"] == curve), key=lambda row: row["sparsity"]):
                shifted = row["test_acc"] + direction * margin95(row)
                if not is_dense(row) and shifted < 100 * dense["correct"] / dense["total"] - tolerance:
                    break
                knee = row["sparsity"]
            bounds.append(knee)
        ranges[curve] = tuple(bounds)
    return ranges


def smallest_file(rows: list[dict], dense: dict, tolerance: float, rule: str = "point") -> dict | None:
    """The row with the smallest measured file among those within tolerance of dense (by the knee `rule`), any curve, any level."""
    within = [row for row in rows if "disk_bytes" in row and kept(row, dense, tolerance, rule)]
    return min(within, key=lambda row: (row["disk_bytes"], -row["test_acc"]), default=None)
