"""The output folder as durable state: lock, completed shards, failure log, leftovers.

What is done is read from the completed shards alone (a shard is renamed into
place only once it is whole), so a killed run loses at most the videos it had
not yet written, and a rerun does exactly those. A video is identified by its
absolute path; its size and mtime tell whether it changed since it was
extracted. When a video appears in several shards (it changed and was
extracted again), the newest shard's rows are live and older ones superseded.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py

from .schema import ABSPATH, CLIP_COUNT, MTIME, SIZE, TMP_SUFFIX, shard_number, shard_part_label, sorted_shards

log = logging.getLogger(__name__)

LOCK_NAME = ".videobert.lock"
FAILURE_LOG = "failures.jsonl"
FAILURE_LOGS = "failures*.jsonl"  # failures.jsonl, and failures-rIII.jsonl per part of split runs
STAGES = ("probe", "decode", "transcript", "encode", "write")

# Which part of the work this process owns; its files and locks are named after it.
@dataclass(frozen=True)
class Part:
    index: int
    count: int
    source: str  # "single", "torchrun", "--num-shards", "slurm array"
    local_rank: int = 0  # torchrun's LOCAL_RANK: the GPU this rank uses

    @property
    def split(self) -> bool:
        return self.count > 1

    @property
    def torchrun(self) -> bool:
        return self.source == "torchrun" and self.count > 1

    @property
    def label(self) -> str:
        return f"r{self.index:03d}"

    def describe(self) -> str:
        return f"part {self.index} of {self.count} from {self.source}" if self.split else "one part"


SINGLE = Part(0, 1, "single")


class LockHeld(RuntimeError):
    """Another run holds the output folder (or this part of it)."""


@dataclass(frozen=True)
class DoneVideo:
    abspath: str
    size: int
    mtime: float
    shard: str
    clip_count: int


def append_line(path: Path, record: dict[str, Any]) -> None:
    """One JSON line, on disk before we go on (a kill right after keeps it)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


class OutputDir:
    """One output folder, seen by one run or by one part of a split run.

    Locks (flock, dropped by the kernel when the holder dies): a run in one part holds
    .videobert.lock exclusively. A part of a run split N ways holds it shared, holds
    .videobert.split-N.lock shared (so runs split another number of ways, whose parts
    would overlap, are refused) and .videobert.rIII.lock exclusively (so two runs of the
    same part are refused). Each part writes only its own shard names and failure log."""

    def __init__(self, path: Path, part: Part = SINGLE) -> None:
        self.path = path
        self.part = part
        self._lock_fds: list[int] = []

    @property
    def part_label(self) -> str:
        """What this part's file names carry ("rIII"); "" for a run in one part."""
        return self.part.label if self.part.split else ""

    # -- lock -------------------------------------------------------------------------------
    def lock(self, wait: bool = False) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            if not self.part.split:
                self._flock(LOCK_NAME, fcntl.LOCK_EX, wait, "another run")
                self._stamp(self._lock_fds[-1], "")
                return
            self._flock(LOCK_NAME, fcntl.LOCK_SH, wait, "a run that is not split")
            self._flock(f".videobert.split-{self.part.count}.lock", fcntl.LOCK_SH, wait, "another run")
            for other in sorted(self.path.glob(".videobert.split-*.lock")):
                if other.name != f".videobert.split-{self.part.count}.lock" and _held(other):
                    raise LockHeld(f"{self.path} is in use by a run split {other.name.split('-')[1].split('.')[0]}"
                                   f" ways; its parts would overlap with part {self.part.index} of "
                                   f"{self.part.count}: wait for it to finish, or split the same way")
            self._flock(f".videobert.{self.part.label}.lock", fcntl.LOCK_EX, wait,
                        f"another run of part {self.part.index}")
            self._stamp(self._lock_fds[-1], f", {self.part.describe()}")
        except BaseException:
            self.unlock()
            raise

    def _flock(self, name: str, mode: int, wait: bool, holder_kind: str) -> None:
        lock_path = self.path / name
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                holder = lock_path.read_text(errors="replace").strip()
                if name == LOCK_NAME and mode == fcntl.LOCK_EX:  # held shared: by the parts of a split run
                    parts = [p.read_text(errors="replace").strip() for p in sorted(self.path.glob(".videobert.r*.lock"))
                             if _held(p)]
                    holder = "; ".join(parts) or holder
                holder = holder or "unknown"
                raise LockHeld(f"{self.path} is in use by {holder_kind} ({holder}); "
                               "wait for it, or pass --wait to queue behind it") from None
            raise
        self._lock_fds.append(fd)

    @staticmethod
    def _stamp(fd: int, what: str) -> None:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {_now()}{what}\n".encode())

    def unlock(self) -> None:
        for fd in reversed(self._lock_fds):
            os.close(fd)
        self._lock_fds = []

    # -- leftovers and overwrite ------------------------------------------------------------
    def remove_temporary(self) -> list[Path]:
        """Temporary files of interrupted runs that no running part can own: all of them in a run
        in one part; in a split run, each part's own, and part 0 also those of no current part."""
        leftovers = []
        running = {f"r{i:03d}" for i in range(self.part.count) if i != self.part.index}
        for path in sorted(self.path.glob("*" + TMP_SUFFIX)):
            owner = shard_part_label(path)
            mine = owner == self.part.label or (self.part.index == 0 and owner not in running)
            if not self.part.split or mine:
                log.warning("removing %s left by an interrupted run", path)
                path.unlink(missing_ok=True)
                leftovers.append(path)
        return leftovers

    def clear(self) -> None:
        """--overwrite: forget every shard and failure log (only with the whole folder locked)."""
        for path in [*sorted_shards(self.path), *self.path.glob(FAILURE_LOGS)]:
            path.unlink(missing_ok=True)

    # -- what is done -----------------------------------------------------------------------
    def done_videos(self) -> dict[str, DoneVideo]:
        """Live entry per absolute path (the newest shard wins)."""
        done: dict[str, DoneVideo] = {}
        for shard in sorted_shards(self.path):
            with h5py.File(shard, "r") as f:
                for abspath, size, mtime, count in zip(f[ABSPATH.path].asstr()[()], f[SIZE.path][()],
                                                       f[MTIME.path][()], f[CLIP_COUNT.path][()]):
                    done[abspath] = DoneVideo(abspath, int(size), float(mtime), shard.name, int(count))
        return done

    def existing_attrs(self) -> dict[str, Any] | None:
        """Attributes of the newest completed shard, or None."""
        from .reader import read_attrs

        shards = sorted_shards(self.path)
        if not shards:
            return None
        with h5py.File(shards[-1], "r") as f:
            return read_attrs(f)

    def next_shard_index(self) -> int:
        shards = sorted_shards(self.path)
        return max(map(shard_number, shards)) + 1 if shards else 0

    # -- failures ---------------------------------------------------------------------------
    @property
    def failure_log(self) -> Path:
        """Where this run (or this part) appends its failures."""
        return self.path / (f"failures-{self.part_label}.jsonl" if self.part_label else FAILURE_LOG)

    def failure_records(self) -> list[dict[str, Any]]:
        """Every record of every part's failure log, oldest first; raises ValueError naming a bad line."""
        records = []
        for log_path in sorted(self.path.glob(FAILURE_LOGS)):
            records += _read_failure_log(log_path)
        return sorted(records, key=lambda r: str(r.get("time", "")))  # stable: a log's own order on ties

    def failed_videos(self, done: dict[str, DoneVideo] | None = None,
                      records: list[dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
        """Last failure per absolute path, for paths not extracted since."""
        done = self.done_videos() if done is None else done
        last: dict[str, dict[str, Any]] = {}
        for record in self.failure_records() if records is None else records:
            last[record["abspath"]] = record
        return {path: rec for path, rec in last.items() if path not in done}

    def record_failure(self, *, path: str, abspath: str, stage: str, error_type: str, message: str,
                       size: int | None, mtime: float | None, attempt: int) -> dict[str, Any]:
        record = {"path": path, "abspath": abspath, "stage": stage, "error_type": error_type, "message": message,
                  "time": _now(), "attempt": attempt, "size": size, "mtime": mtime}
        append_line(self.failure_log, record)
        return record


def _read_failure_log(path: Path) -> list[dict[str, Any]]:
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            # A kill in the middle of an append can leave a partial last line; anywhere else it is damage.
            if number == len(lines):
                log.warning("%s: ignoring a partial last line", path)
                continue
            raise ValueError(f"{path}:{number}: not a JSON line") from None
        if not isinstance(record, dict) or not {"abspath", "stage", "message"} <= set(record):
            raise ValueError(f"{path}:{number}: missing abspath/stage/message")
        records.append(record)
    return records


def _held(path: Path) -> bool:
    """Whether some process holds a lock on `path` (probed without waiting, released at once)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return True
        raise
    finally:
        os.close(fd)
    return False


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
