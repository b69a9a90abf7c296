"""The visual vocabulary file (`videobert vocab -o vocab.h5`): HDF5, written atomically.

Layout: attributes `format` ("videobert-visual-vocab"), `format_version`, `branching`, `depth`,
`field`, `dim`, `seed`, `created_utc`, `tool_version`, `source`, and JSON `models` (role, name,
sha256 of the models behind `field`), `sample` (clips sampled, out of, the sample's sha256, a probe
clip), `fit` (iterations, tolerance, inertia per level, words used, seconds); datasets
`level_L/centroids` ((branching^(L+1), dim) float32) and `level_L/valid` ((branching^(L+1),) bool)
for L = 0 .. depth-1 (see videobert_cli/vocab.py for the tree's layout).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np

from ..vocab import VOCAB_FORMAT, VOCAB_VERSION, VisualVocab
from .reader import plain_value
from .writer import fsync_dir

_JSON = ("models", "sample", "fit")
_SCALARS = ("branching", "depth", "field", "seed", "created_utc", "tool_version", "source")


class VocabFileError(ValueError):
    """Not a vocabulary file this version can read (a usage error)."""


def write_vocab(path: str | Path, vocab: VisualVocab) -> str:
    """Write the vocabulary under a temporary name, flush, rename; returns the file's sha256."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = VOCAB_FORMAT
            f.attrs["format_version"] = VOCAB_VERSION
            f.attrs["dim"] = vocab.dim
            for key in _SCALARS:
                f.attrs[key] = getattr(vocab, key)
            for key in _JSON:
                f.attrs[key] = json.dumps(getattr(vocab, key), sort_keys=True)
            for level, (centroids, valid) in enumerate(zip(vocab.centroids, vocab.valid)):
                group = f.create_group(f"level_{level}")
                group.create_dataset("centroids", data=np.asarray(centroids, dtype=np.float32))
                group.create_dataset("valid", data=np.asarray(valid, dtype=bool))
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent if str(path.parent) else Path("."))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return file_sha256(path)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_vocab(path: str | Path) -> VisualVocab:
    path = Path(path).expanduser()
    if not path.is_file():
        raise VocabFileError(f"visual vocabulary not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: plain_value(v) for k, v in f.attrs.items()}
            if attrs.get("format") != VOCAB_FORMAT:
                raise VocabFileError(f"{path}: not a visual vocabulary (written by `videobert vocab`)")
            if attrs.get("format_version") != VOCAB_VERSION:
                raise VocabFileError(f"{path}: vocabulary format version {attrs.get('format_version')}, "
                                     f"this version reads {VOCAB_VERSION}")
            depth = int(attrs["depth"])
            centroids = [f[f"level_{level}/centroids"][()] for level in range(depth)]
            valid = [f[f"level_{level}/valid"][()].astype(bool) for level in range(depth)]
    except OSError as exc:
        raise VocabFileError(f"{path}: cannot be read ({exc})") from None
    except KeyError as exc:
        raise VocabFileError(f"{path}: malformed visual vocabulary ({exc})") from None
    try:
        return VisualVocab(centroids=centroids, valid=valid,
                           **{k: attrs[k] for k in _SCALARS},
                           **{k: json.loads(attrs[k]) for k in _JSON})
    except (KeyError, ValueError, TypeError) as exc:
        raise VocabFileError(f"{path}: malformed visual vocabulary ({exc})") from None
