"""videobert: per-clip multimodal embeddings from videos and their transcripts."""

__version__ = "0.1.0"

from .store.reader import ClipDataset, FeatureSet, open_features  # noqa: E402

__all__ = ["ClipDataset", "FeatureSet", "__version__", "open_features"]
