"""`videobert export-sequences`: each video as the interleaved text / visual-word sequence VideoBERT trains on.

For each live video of a tokenized features folder (in shard order), its clips in time order; each
clip contributes the words of its text (whitespace-split, as stored in clips/text), then `[SEP]`,
then its visual word as the token `[V<id>]` (clips without text contribute their visual word
alone). Every token carries the clip's start and end time.

Two layouts, both JSON Lines (one video per line):

* `videos`: {"video", "abspath", "duration", "vocab", "clips": [{"start", "end", "text",
  "visual_word", "visual_path"}, ...], "tokens": [...], "token_types": [...], "start": [...],
  "end": [...]}: everything, nested;
* `hf`: {"video", "text", "tokens", "token_type_ids", "visual_words", "start", "end"}: the same
  sequence in flat columns of one type each (strings, lists of strings, ints or floats), as
  `datasets.load_dataset("json", data_files="seqs.jsonl")` reads them. token_type_ids: 0 text,
  1 [SEP], 2 visual word.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from ..store.columns import has_clip_column, read_rows
from ..store.reader import FeatureError, FeatureSet, open_features
from ..store.schema import END, START, TEXT, VISUAL_PATH, VISUAL_VOCAB_ATTR, VISUAL_WORD
from .corpus import TrainingError

SEP = "[SEP]"
FORMATS = ("videos", "hf")
TEXT_TYPE, SEP_TYPE, VISUAL_TYPE = 0, 1, 2


def visual_token(word: int) -> str:
    return f"[V{int(word)}]"


def _vocab_of(features: FeatureSet) -> dict[str, Any]:
    missing = [s.path.name for s in features.shards if s.num_clips and not has_clip_column(s.path, VISUAL_WORD.name)]
    if missing:
        raise TrainingError(f"{features.out_dir}: {len(missing)} shard(s) have no visual words ({missing[0]}, ...); "
                            "run `videobert tokenize FEATURES_DIR --vocab VOCAB` first")
    vocabs = {a.get(VISUAL_VOCAB_ATTR, {}).get("sha256") for a, s in zip(features.attrs, features.shards)
              if s.num_clips}
    if len(vocabs) > 1:
        raise TrainingError(f"{features.out_dir}: its shards were tokenized with {len(vocabs)} different vocabularies; "
                            "run `videobert tokenize` on the whole folder with one")
    first = next((a for a, s in zip(features.attrs, features.shards) if s.num_clips), features.attrs[0])
    return dict(first.get(VISUAL_VOCAB_ATTR) or {})


def video_sequences(features: FeatureSet) -> Iterator[dict[str, Any]]:
    """One record per live video (the `videos` layout), streamed shard by shard."""
    vocab = _vocab_of(features)
    vocab_info = {k: vocab.get(k) for k in ("sha256", "branching", "depth", "field")}
    by_shard: dict[str, list[dict[str, Any]]] = {}
    for video in features.videos:
        by_shard.setdefault(video["shard"], []).append(video)
    for shard in features.shards:
        if not shard.num_clips:
            continue
        cols = {c.name: read_rows(shard.path, c.name, shard.rows) for c in (START, END, TEXT, VISUAL_WORD, VISUAL_PATH)}
        for video in by_shard.get(str(shard.path), []):
            lo = video["first_clip"] - shard.first_clip
            rows = range(lo, lo + video["clip_count"])
            clips, tokens, types, starts, ends = [], [], [], [], []
            for r in sorted(rows, key=lambda r: (cols[START.name][r], r)):
                text = cols[TEXT.name][r]
                text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
                start, end, word = float(cols[START.name][r]), float(cols[END.name][r]), int(cols[VISUAL_WORD.name][r])
                clips.append({"start": start, "end": end, "text": text, "visual_word": word,
                              "visual_path": [int(v) for v in cols[VISUAL_PATH.name][r]]})
                words = text.split()
                piece = [*words, SEP] if words else []
                piece_types = [TEXT_TYPE] * len(words) + ([SEP_TYPE] if words else [])
                tokens += [*piece, visual_token(word)]
                types += [*piece_types, VISUAL_TYPE]
                starts += [start] * (len(piece) + 1)
                ends += [end] * (len(piece) + 1)
            yield {"video": video["path"], "abspath": video["abspath"], "duration": video["duration"],
                   "vocab": vocab_info, "clips": clips, "tokens": tokens, "token_types": types,
                   "start": starts, "end": ends}


def hf_row(record: dict[str, Any]) -> dict[str, Any]:
    return {"video": record["video"], "text": " ".join(record["tokens"]), "tokens": record["tokens"],
            "token_type_ids": record["token_types"], "visual_words": [c["visual_word"] for c in record["clips"]],
            "start": record["start"], "end": record["end"]}


def export_sequences(features_dir: str | Path, out_path: str | Path, fmt: str = "videos",
                     on_video: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Write the sequences as JSON Lines (atomically: a temporary file renamed into place)."""
    if fmt not in FORMATS:
        raise TrainingError(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
    try:
        features = open_features(features_dir)
    except (FeatureError, OSError) as exc:
        raise TrainingError(str(exc)) from None
    out_path = Path(out_path)
    tmp = out_path.with_name(out_path.name + ".tmp")
    videos = clips = tokens = 0
    used: set[int] = set()
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            for record in video_sequences(features):
                row = hf_row(record) if fmt == "hf" else record
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                videos += 1
                clips += len(record["clips"])
                tokens += len(record["tokens"])
                used.update(c["visual_word"] for c in record["clips"])
                if on_video:
                    on_video(len(record["clips"]))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        features.close()
    return {"features_dir": str(features_dir), "out": str(out_path), "format": fmt, "videos": videos, "clips": clips,
            "tokens": tokens, "visual_words_used": len(used),
            "mean_tokens_per_video": round(tokens / videos, 2) if videos else 0.0}

