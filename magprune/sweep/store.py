"""The rows of a sweep on disk: `sweep.json` (the config as run, every row, the summary), `sweep.csv`, resume.

    store = RowStore(config, ranks)       # the rows an earlier run of this config left in its output folder
    store.find("global+BN", 0.5)          # a row, or None
    store.add(rows)                       # kept, and written at once

Every file is written whole through a temporary name (`io.atomic_write`), after every test, so an
interrupted sweep resumes where it stopped. One sweep at a time writes to a folder: `hold_folder` takes an
OS lock on its `.sweep.lock` that the sweep holds until its process ends (killed or not), and a second
sweep into the folder is refused before it touches anything there. With several processes each rank writes its own rows to
`sweep.rank<r>.json`; rank 0 gathers them into the sweep's own files at the end, and resuming reads
every rank's rows, whatever number of processes made them.
"""
from __future__ import annotations

import csv
import dataclasses
import errno
import fcntl
import io
import json
import os
import socket
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from magprune.core.io import answers_path, atomic_write, read_answers, write_answers
from magprune.core.stats import binomial_se, dense_row, paired_drop
from magprune.errors import InputError
from magprune.sweep.ranks import Ranks

if TYPE_CHECKING:  # the config imports the chains, which compare configs here
    from magprune.sweep.config import SweepConfig

RESULT_COLUMNS = ("curve", "method", "recovery", "quantize", "sparsity", "achieved_sparsity", "test_acc", "test_acc_se",
                  "correct", "total", "test_loss", "disk_bytes")


LOCK_NAME = ".sweep.lock"
LOCK_WAIT_SECONDS = 600  # how long the other ranks of a sweep wait for rank 0 to take the folder


class SettingsChanged(Exception):
    """The output folder holds a sweep run with other settings."""


class FolderBusy(InputError):
    """Another sweep holds the output folder."""


class DamagedResults(InputError):
    """A results file in the output folder cannot be read; it is left as it is."""


def hold_folder(out_dir: Path, launch_id: str = ""):
    """Take the folder's lock for this process, or raise FolderBusy naming the process that holds it.

    `flock`: the kernel drops it when the process ends, however it ends, so a killed sweep never leaves the
    folder locked; it belongs to this open file, so reading the lock file elsewhere cannot drop it; and on
    NFS, Linux carries it to the server as a POSIX lock (v4, or v3 with its lock manager), between machines. Returns the open lock file: the lock lasts while it stays open. It then says who
    holds it (process, machine, launch), which is what a refused sweep prints and what the other ranks
    of this sweep wait to read (`wait_for_folder`).
    """
    handle = open(out_dir / LOCK_NAME, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):  # else a file system without locks (NFS nolock, some FUSE)
            warnings.warn(f"{out_dir} cannot be locked ({error.strerror}): nothing keeps a second sweep out of it")
            return handle
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise FolderBusy(f"{out_dir} is in use by another sweep ({holder}); wait for it to finish, "
                         "or give this one another output folder") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
                 + (f", launch {launch_id}" if launch_id else "") + "\n")
    handle.flush()
    return handle


def wait_for_folder(out_dir: Path, launch_id: str, timeout: float = LOCK_WAIT_SECONDS, poll: float = 0.2) -> None:
    """A rank other than 0: return once rank 0 of this launch holds the folder; raise FolderBusy if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if f"launch {launch_id}\n" in (out_dir / LOCK_NAME).read_text():
                return
        except OSError:
            pass
        time.sleep(poll)
    raise FolderBusy(f"rank 0 of this sweep did not take {out_dir} within {timeout:.0f} s (another sweep holds it?)")


def read_json(path: Path):
    """A results file's JSON, or DamagedResults that names it and says what to do; the file is never changed."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) else f"not complete JSON: {error}"
        raise DamagedResults(f"{path} cannot be read ({reason}); it is left as it is: restore it, or move the folder "
                             "aside and run again to start afresh") from None


def csv_text(rows: list[dict]) -> str:
    """The rows as CSV: the result columns first, then whatever else the rows hold, sorted."""
    present = {key for row in rows for key in row}
    columns = [key for key in RESULT_COLUMNS if key in present] + sorted(present - set(RESULT_COLUMNS))
    stream = io.StringIO()
    writer = csv.DictWriter(stream, fieldnames=columns, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return stream.getvalue()


def shard_path(out_dir: Path, rank: int) -> Path:
    return out_dir / f"sweep.rank{rank}.json"


def read_shards(out_dir: Path) -> list[dict]:
    """Rows every rank of this or an earlier launch wrote, in rank order."""
    shards = sorted(out_dir.glob("sweep.rank*.json"), key=lambda path: int(path.stem.removeprefix("sweep.rank")))
    return [row for path in shards for row in read_json(path)]


def clear_shards(out_dir: Path) -> None:
    for path in [*out_dir.glob("sweep.rank*.json"), *out_dir.glob("rank*.done"), *out_dir.glob("rank*.failed")]:
        path.unlink(missing_ok=True)


def with_shards(out_dir: Path, rows: list[dict]) -> list[dict]:
    """`rows` and the rows of every rank's file in `out_dir` that they do not already hold, each once (two ranks that
    finish the last seeds of a chain's level together may both store its row)."""
    merged, known = list(rows), {(row["curve"], row["sparsity"]) for row in rows}
    for row in read_shards(out_dir):
        if (row["curve"], row["sparsity"]) not in known:
            known.add((row["curve"], row["sparsity"]))
            merged.append(row)
    return merged


# The grid itself: a rerun with other methods or levels adds them to the rows kept.
EXTENDED = ("methods", "sparsities")


def measures_like(config: SweepConfig, saved: dict, ignoring: tuple[str, ...] = ()) -> bool:
    """Whether the rows of a sweep run with the `saved` config are what `config` would measure (`ignoring` some settings)."""
    compared = [field for field in dataclasses.fields(config)
                if field.metadata["compared"] and field.name not in EXTENDED + ignoring]
    mine = {name: value for name, value in config.to_json().items() if name in {field.name for field in compared}}
    if isinstance(saved.get("retrain_epochs"), int):  # saved before a chain's steps could differ in epochs
        saved = {**saved, "retrain_epochs": [saved["retrain_epochs"]]}
    # A setting added since that sweep was made measured then what its default measures now.
    defaults = json.loads(json.dumps({field.name: field.metadata["before"] for field in compared}))
    return mine == {key: saved.get(key, defaults[key]) for key in mine}


def joined_with(config: SweepConfig, saved: dict) -> SweepConfig:
    """`config` with the methods and levels of the `saved` sweep it resumes added: a rerun never drops rows. Its own
    methods come first (the first is the one `--export` writes)."""
    methods = config.methods + tuple(method for method in saved["methods"] if method not in config.methods)
    return dataclasses.replace(config, methods=methods, sparsities=tuple(sorted({*config.sparsities, *saved["sparsities"]})))


class RowStore:
    """A sweep's rows and layer-sensitivity rows, kept on disk after every test.

    Opening a folder that holds an earlier run of the same settings resumes it: its rows are kept and
    `config` becomes this config joined with that run's grid (a rerun never drops rows). Other
    settings are `SettingsChanged`.
    """

    def __init__(self, config: SweepConfig, ranks: Ranks | None = None):
        self.config = config
        self.ranks = ranks or Ranks()
        self.out_dir = Path(config.output_dir)
        self.rows, self.sensitivity = self._resume()
        self._made: list[dict] = []  # the rows this process tested in this run: its shard, when it is one of several
        if self.ranks.world > 1 and self.ranks.is_main:
            self.save()  # the config, before any rank writes rows: what a resumed run compares against

    def _resume(self) -> tuple[list[dict], list[dict]]:
        document = saved_sweep(self.out_dir)
        if document is None:
            return [], []
        if not measures_like(self.config, document.get("config", {})):
            raise SettingsChanged(self.out_dir)
        self.config = joined_with(self.config, document["config"])
        rows = with_shards(self.out_dir, document["rows"])
        for row in rows:  # rows of a sweep made before accuracies carried their standard error
            row.setdefault("test_acc_se", binomial_se(row["correct"], row["total"]))
        return rows, document.get("sensitivity", [])

    @staticmethod
    def rows_on_disk(out_dir: Path) -> int:
        """How many rows the folder's files hold now: sweep.json's and the ranks' that it does not."""
        document = saved_sweep(out_dir)
        return len(with_shards(out_dir, document["rows"] if document else []))

    def find(self, curve: str, sparsity: float) -> dict | None:
        return next((row for row in self.rows if row["curve"] == curve and row["sparsity"] == sparsity), None)

    def add(self, rows: list[dict]) -> None:
        """Keep the rows of one test and write them: the sweep's files, or with several processes this rank's own.
        A row's per-image answers (`answers`, by seed) go to their own files; its paired drop is measured when it can be."""
        for row in rows:
            for seed, hits in row.pop("answers", {}).items():
                self.keep_answers(row["curve"], row["sparsity"], seed, hits)
        self.pair(rows if dense_row(self.rows) else self.rows + rows)
        self.rows.extend(rows)
        self._made.extend(rows)
        if self.ranks.world == 1:
            self.save()
        else:
            atomic_write(shard_path(self.out_dir, self.ranks.rank), json.dumps(self._made, indent=1))

    def keep_answers(self, curve: str, sparsity: float, seed: int, hits: torch.Tensor) -> None:
        """Which test images one seed of a row answered correctly, a bit each (1,250 bytes for 10,000 images)."""
        write_answers(answers_path(self.out_dir, curve, sparsity, seed), hits.numpy())

    def answers(self, row: dict) -> list[np.ndarray] | None:
        """Each seed's answers of `row` (a bool per test image, in the order tested); None where any is not on disk."""
        images = row["total"] // row.get("seeds", 1)
        paths = [answers_path(self.out_dir, row["curve"], row["sparsity"], seed) for seed in row.get("run_seeds", [])]
        if not paths or not all(path.is_file() for path in paths):
            return None
        return [read_answers(path, images) for path in paths]

    def pair(self, rows: list[dict]) -> None:
        """Give each of `rows` its drop from dense measured image by image (`stats.paired_drop`), where the dense
        row and both answers are on disk; the others are left as they are."""
        dense = dense_row(self.rows + rows)
        reference = self.answers(dense) if dense else None
        if reference is None:
            return
        for row in rows:
            answers = self.answers(row)
            if answers is not None and len(answers[0]) == len(reference[0]):
                row.update(paired_drop(reference[0], answers))

    def add_sensitivity(self, row: dict) -> None:
        self.sensitivity.append(row)
        self.save()

    def order(self, plan: list[tuple[str, str, float]]) -> None:
        """Rows in the order of `plan` (method, recovery, level), each one's quantised twins after it; rows the plan
        does not name (a chain's levels below the grid's) after them, by curve and level, whichever rank made them."""
        position = {key: index for index, key in enumerate(plan)}
        self.rows.sort(key=lambda row: (position.get((row["method"], row["recovery"], row["sparsity"]), len(position)),
                                        row.get("quantize", 0) != 0, -row.get("quantize", 0), row["curve"], row["sparsity"]))

    def finish(self, plan: list[tuple[str, str, float]]) -> None:
        """Rank 0, once every rank is done: every rank's rows in plan order, in this sweep's own files."""
        self.rows = with_shards(self.out_dir, self.rows)
        self.pair([row for row in self.rows if "paired_drop" not in row])  # the dense row may have come from another rank
        self.order(plan)
        self.save()
        clear_shards(self.out_dir)  # rows an earlier run of several processes left are in sweep.json now

    def save(self, summary: dict | None = None) -> None:
        document = {"config": self.config.to_json(), "rows": self.rows, "sensitivity": self.sensitivity,
                    **({"summary": summary} if summary else {})}
        atomic_write(self.out_dir / "sweep.json", json.dumps(document, indent=1))
        atomic_write(self.out_dir / "sweep.csv", csv_text(self.rows))
        if self.sensitivity:
            atomic_write(self.out_dir / "sensitivity.csv", csv_text(self.sensitivity))


def saved_sweep(out_dir: Path) -> dict | None:
    """The sweep.json a folder holds (None if it holds none), every rank's file read too: DamagedResults if any
    cannot be read, or if a sweep.csv stands without its sweep.json (starting afresh would overwrite that table)."""
    read_shards(out_dir)
    saved = out_dir / "sweep.json"
    if not saved.exists():
        if (out_dir / "sweep.csv").exists():
            raise DamagedResults(f"{out_dir} holds a sweep.csv but no sweep.json to resume it from; it is left as it is: "
                                 "restore sweep.json, or give another output folder")
        return None
    document = read_json(saved)
    if not isinstance(document, dict) or not isinstance(document.get("rows"), list):
        raise DamagedResults(f"{saved} is not a sweep's results (no rows); it is left as it is: restore it, or give "
                             "another output folder")
    return document


def read_sweep(folder: Path) -> dict:
    """The sweep.json in `folder` (or `folder` itself, a sweep.json), or an InputError that says what is wrong with it."""
    return read_json(folder / "sweep.json" if folder.is_dir() else folder)
