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

from .writer import SHARD_GLOB, TMP_SUFFIX

log = logging.getLogger(__name__)

LOCK_NAME = ".videobert.lock"
FAILURE_LOG = "failures.jsonl"
STAGES = ("probe", "decode", "transcript", "encode", "write")


class LockHeld(RuntimeError):
    """Another run holds the output folder."""


@dataclass(frozen=True)
class DoneVideo:
    abspath: str
    size: int
    mtime: float
    shard: str
    clip_count: int


def shard_index(path: Path) -> int:
    return int(path.name.split("-")[-1].split(".")[0])


def sorted_shards(folder: Path) -> list[Path]:
    """Completed shards, oldest first (their numbers only grow)."""
    return sorted(folder.glob(SHARD_GLOB), key=lambda p: (shard_index(p), p.name))


def append_line(path: Path, record: dict[str, Any]) -> None:
    """One JSON line, on disk before we go on (a kill right after keeps it)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


class OutputDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_fd: int | None = None

    # -- lock -------------------------------------------------------------------------------
    def lock(self, wait: bool = False) -> None:
        """An exclusive flock on OUT/.videobert.lock; the kernel drops it when the holder dies."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock_path = self.path / LOCK_NAME
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            holder = lock_path.read_text(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise LockHeld(f"{self.path} is in use by another run ({holder}); "
                               "wait for it, or pass --wait to queue behind it") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {_now()}\n".encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- leftovers and overwrite ------------------------------------------------------------
    def remove_temporary(self) -> list[Path]:
        leftovers = sorted(self.path.glob("*" + TMP_SUFFIX))
        for path in leftovers:
            log.warning("removing %s left by an interrupted run", path)
            path.unlink()
        return leftovers

    def clear(self) -> None:
        """--overwrite: forget every shard and the failure log."""
        for path in [*sorted_shards(self.path), self.path / FAILURE_LOG]:
            path.unlink(missing_ok=True)

    # -- what is done -----------------------------------------------------------------------
    def done_videos(self) -> dict[str, DoneVideo]:
        """Live entry per absolute path (the newest shard wins)."""
        done: dict[str, DoneVideo] = {}
        for shard in sorted_shards(self.path):
            with h5py.File(shard, "r") as f:
                videos = f["videos"]
                for abspath, size, mtime, count in zip(videos["abspath"].asstr()[()], videos["size"][()],
                                                       videos["mtime"][()], videos["clip_count"][()]):
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
        return shard_index(shards[-1]) + 1 if shards else 0

    # -- failures ---------------------------------------------------------------------------
    @property
    def failure_log(self) -> Path:
        return self.path / FAILURE_LOG

    def failure_records(self) -> list[dict[str, Any]]:
        """Every record of the failure log; raises ValueError naming a bad line."""
        if not self.failure_log.exists():
            return []
        records = []
        lines = self.failure_log.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                # A kill in the middle of an append can leave a partial last line; anywhere else it is damage.
                if number == len(lines):
                    log.warning("%s: ignoring a partial last line", self.failure_log)
                    continue
                raise ValueError(f"{self.failure_log}:{number}: not a JSON line") from None
            if not isinstance(record, dict) or not {"abspath", "stage", "message"} <= set(record):
                raise ValueError(f"{self.failure_log}:{number}: missing abspath/stage/message")
            records.append(record)
        return records

    def failed_videos(self, done: dict[str, DoneVideo] | None = None) -> dict[str, dict[str, Any]]:
        """Last failure per absolute path, for paths not extracted since."""
        done = self.done_videos() if done is None else done
        last: dict[str, dict[str, Any]] = {}
        for record in self.failure_records():
            last[record["abspath"]] = record
        return {path: rec for path, rec in last.items() if path not in done}

    def record_failure(self, *, path: str, abspath: str, stage: str, error_type: str, message: str,
                       size: int | None, mtime: float | None, attempt: int) -> dict[str, Any]:
        record = {"path": path, "abspath": abspath, "stage": stage, "error_type": error_type, "message": message,
                  "time": _now(), "attempt": attempt, "size": size, "mtime": mtime}
        append_line(self.failure_log, record)
        return record


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
