"""Why a video was not extracted."""

from __future__ import annotations


class VideoFailure(Exception):
    def __init__(self, path: str, stage: str, reason: str, error_type: str = "Error") -> None:
        reason = " ".join(str(reason).split())  # always one line
        super().__init__(f"{path}: {stage}: {reason}")
        self.path, self.stage, self.reason, self.error_type = path, stage, reason, error_type
