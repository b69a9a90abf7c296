"""videobert: per-clip multimodal embeddings from videos and their transcripts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["ClipDataset", "FeatureSet", "__version__", "open_features"]

if TYPE_CHECKING:
    from .store.dataset import ClipDataset
    from .store.reader import FeatureSet, open_features


def __getattr__(name: str) -> Any:
    """`from videobert_cli import open_features` as ever; the reader (h5py, torch) is imported on first use,
    so the command line starts without torch (`videobert --help`, a run with nothing new to extract)."""
    if name in ("ClipDataset", "FeatureSet", "open_features"):
        from .store import reader

        return getattr(reader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
