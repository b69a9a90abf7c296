"""The torch Dataset over an output folder (`FeatureSet.dataset`); apart from the reader so that reading
shards (`info`, a run deciding what is left to do) does not import torch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch.utils.data

from .reader import CLIP_FIELDS

if TYPE_CHECKING:
    from .reader import FeatureSet


class ClipDataset(torch.utils.data.Dataset):
    def __init__(self, features: FeatureSet, fields: Sequence[str] = CLIP_FIELDS) -> None:
        self.features = features
        self.fields = tuple(fields)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.features.clip(index, self.fields)
        return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in item.items()}
