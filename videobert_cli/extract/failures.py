"""One shape for why a video was not extracted, from where it fails to the failure log.

A video fails in a decode worker (another process: the failure crosses a queue, so it is plain
picklable data), in an encoder, or before it is ever opened (an input that is no file). Wherever it
happens it becomes one `Failure`, and stays one on its way: a worker raises it inside `VideoFailed`
and sends it as a message, the extractor returns it in place of a video's result, and the run writes
it as one row of the failure log (its fields are the log's first columns: `OutputDir.record_failure`
takes them as keywords, so store needs nothing from extract) and one entry of the run summary.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Failure:
    path: str  # as the user gave it (or as found under a given folder)
    stage: str  # probe, transcript, decode or encode (store.outdir.STAGES)
    error_type: str  # e.g. "DecodeError", "Timeout", "TranscriptError"
    message: str  # the reason, always one line

    def __post_init__(self) -> None:
        object.__setattr__(self, "message", " ".join(str(self.message).split()))

    @classmethod
    def unexpected(cls, path: str, stage: str, exc: BaseException) -> Failure:
        """From an exception no step anticipated (a decoder's own types): its type, its message cut short."""
        return cls(path, stage, type(exc).__name__, " ".join(str(exc).split())[:300])


class VideoFailed(Exception):
    """Raised where a video fails; carries the Failure."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(f"{failure.path}: {failure.stage}: {failure.message}")
        self.failure = failure
