"""How well a trained fusion pairs clips with their text: `videobert evaluate`.

Pure metric functions first (numpy only), then the driver. Retrieval is scored with the alignment
head: S[i, j] = logit(frames of clip i, text of clip j) over every pair of the evaluated clips.

* video -> text: for clip i, rank all texts by S[i, :]; text -> video: for text j, rank all clips
  by S[:, j]. A candidate is relevant when its text has exactly the query's token ids (the clip's
  own text always is; a repeated sentence elsewhere is too, since no score can tell two identical
  texts apart). The rank of a query is 1 + the number of irrelevant candidates scoring at least as
  high as its best relevant one: ties count against the model, so constant scores give no credit.
* recall@k: share of queries with rank <= k. Median rank: median of the ranks.
* alignment: each clip's own pair against one drawn negative (another clip of the same video or a
  clip of another video, with a different text), a balanced set as in VideoBERT; accuracy at
  logit 0 and ROC-AUC (Mann-Whitney, tied scores count one half).
* chance: what a random ranking gets, given how many relevant candidates each query has:
  recall@k = mean over queries of 1 - C(n - m, k) / C(n, k). Alignment accuracy: the best constant
  guess over the pairs actually scored, max(positives, negatives) / pairs. A clip for which no
  negative exists (every other clip has its text) adds a positive and no negative, so the set is
  not always balanced and 0.5 would flatter the model; the best constant guess (not the
  expectation of a random guess at the observed rate, p^2 + (1 - p)^2, which is lower) is the bar
  a model must clear to show that it tells pairs apart. ROC-AUC: 0.5 (it ignores the balance).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..fusion import pad_tokens
from .corpus import Corpus, TrainingError, open_corpus, read_clip, text_key
from .training import FusionAligner, load_trained, resolve_device

KS = (1, 5, 10)


# ---------------------------------------------------------------------------------------- metrics


def first_relevant_ranks(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """(n_queries,) 1-based rank of each query's best relevant candidate. scores and relevant are
    (n_queries, n_candidates); every query needs at least one relevant candidate."""
    scores = np.asarray(scores, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    if scores.shape != relevant.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and relevant {relevant.shape} must be the same 2-d shape")
    if not relevant.any(axis=1).all():
        raise ValueError("every query needs at least one relevant candidate")
    best = np.where(relevant, scores, -np.inf).max(axis=1)
    ahead = ((scores >= best[:, None]) & ~relevant).sum(axis=1)
    return ahead + 1


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    return float(np.mean(np.asarray(ranks) <= k))


def median_rank(ranks: np.ndarray) -> float:
    return float(np.median(ranks))


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random
    negative, ties counting one half. NaN when one class is empty."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks (1-based) over runs of tied scores
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def accuracy(scores: Sequence[float], labels: Sequence[bool], threshold: float = 0.0) -> float:
    scores = np.asarray(scores, dtype=np.float64)
    return float(np.mean((scores > threshold) == np.asarray(labels, dtype=bool)))


def chance_recall(relevant: np.ndarray, k: int) -> float:
    """Expected recall@k of a uniformly random ranking."""
    relevant = np.asarray(relevant, dtype=bool)
    n = relevant.shape[1]
    values = []
    for m in relevant.sum(axis=1):
        miss = math.comb(n - int(m), k) / math.comb(n, k) if k <= n else 0.0
        values.append(1.0 - miss)
    return float(np.mean(values))


def chance_alignment(positives: int, negatives: int) -> dict[str, Any]:
    """Chance figures of the alignment set: accuracy of the best constant guess, max(P, N) / (P + N),
    and ROC-AUC 0.5; with the counts they come from."""
    pairs = positives + negatives
    return {"accuracy": round(max(positives, negatives) / pairs, 6) if pairs else float("nan"), "roc_auc": 0.5,
            "positives": int(positives), "negatives": int(negatives)}


def retrieval_metrics(scores: np.ndarray, relevant: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    ranks = first_relevant_ranks(scores, relevant)
    out = {f"R@{k}": round(recall_at_k(ranks, k), 6) for k in ks}
    out["median_rank"] = median_rank(ranks)
    out["mean_rank"] = round(float(np.mean(ranks)), 6)
    return out


def alignment_metrics(positive: np.ndarray, negative: np.ndarray) -> dict[str, float]:
    scores = np.concatenate([positive, negative])
    labels = np.concatenate([np.ones(len(positive), bool), np.zeros(len(negative), bool)])
    return {"accuracy": round(accuracy(scores, labels), 6), "roc_auc": round(roc_auc(scores, labels), 6),
            "pairs": int(len(scores))}


# ----------------------------------------------------------------------------------------- driver


def pick_negatives(clip_video: np.ndarray, keys: np.ndarray, seed: int, same_video_share: float) -> np.ndarray:
    """For each clip (row), the row of its alignment negative, or -1 when every other clip has
    its text. From its own video with probability same_video_share (when it has a clip there with
    another text), else from another video (when there is one); deterministic in seed."""
    n = len(keys)
    out = np.full(n, -1, dtype=np.int64)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        other_text = keys != keys[i]
        same = np.flatnonzero(other_text & (clip_video == clip_video[i]))
        other = np.flatnonzero(other_text & (clip_video != clip_video[i]))
        use_same = len(same) and (not len(other) or rng.random() < same_video_share)
        pool = same if use_same else other
        if len(pool):
            out[i] = pool[rng.integers(len(pool))]
    return out


def pair_chunk(frames: int, tokens: int, dim: int, budget: int = 1 << 24) -> int:
    """Pairs per attention call, so that one (pairs, frames + tokens, dim) tensor stays near `budget` floats."""
    return max(1, budget // max(1, (frames + tokens) * dim))


@torch.no_grad()
def score_all_pairs(model: FusionAligner, frames: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor,
                    device: torch.device) -> np.ndarray:
    model = model.to(device).eval()
    hv, ht = model.fusion.project(frames.to(device), tokens.to(device))
    chunk = pair_chunk(hv.shape[1], ht.shape[1], hv.shape[2])
    scores = model.score_matrix(hv, ht, token_mask.to(device), chunk=chunk)
    return scores.float().cpu().numpy()


def _evaluated_clips(corpus: Corpus, train_keys: set[str], val_keys: set[str], max_clips: int,
                     seed: int) -> tuple[np.ndarray, dict[str, int]]:
    held = np.array([i for i, key in enumerate(corpus.video_keys) if key not in train_keys], dtype=np.int64)
    if not len(held):
        raise TrainingError("every video of these features was used to train this checkpoint: nothing is held out")
    clips = corpus.text_clips(held)
    if len(clips) < 2:
        raise TrainingError(f"{len(clips)} held-out clip(s) with text: retrieval needs at least 2")
    if len(clips) > max_clips:
        clips = np.sort(np.random.default_rng(seed).choice(clips, size=max_clips, replace=False))
    videos = np.unique(corpus.clip_video[clips])
    counts = {"videos": int(len(videos)),
              "validation_videos": int(sum(corpus.video_keys[v] in val_keys for v in videos)),
              "held_out_clips_total": int(len(corpus.text_clips(held)))}
    counts["unseen_videos"] = counts["videos"] - counts["validation_videos"]
    return clips, counts


def evaluate(features_dir: str | Path, checkpoint: str | Path, *, device: str = "auto", max_clips: int = 1000,
             seed: int = 0) -> dict[str, Any]:
    """Retrieval and alignment metrics of the trained fusion and of its untrained starting point on
    the held-out videos of FEATURES_DIR (every video the checkpoint did not train on)."""
    if max_clips < 2:
        raise TrainingError("max clips must be >= 2")
    torch_device = resolve_device(device)
    corpus = open_corpus(features_dir)
    loaded = load_trained(checkpoint, corpus)
    clips, counts = _evaluated_clips(corpus, loaded.train_video_keys, loaded.val_video_keys, max_clips, seed)

    items = [read_clip(corpus.features, int(c)) for c in clips]
    keys = np.array([text_key(i["ids"]) for i in items], dtype=np.int64)
    frames = torch.from_numpy(np.stack([i["frames"] for i in items]))
    tokens, token_mask = pad_tokens([i["tokens"] for i in items], items[0]["tokens"].shape[1])
    relevant = keys[:, None] == keys[None, :]
    clip_video = corpus.clip_video[clips]
    share = float(loaded.blob["training"]["config"].get("same_video_negatives", 0.5))
    negatives = pick_negatives(clip_video, keys, seed, share)
    has_neg = negatives >= 0

    report: dict[str, Any] = {
        "features_dir": str(features_dir), "checkpoint": str(checkpoint), "clips": int(len(clips)), **counts,
        "distinct_texts": int(len(np.unique(keys))), "device": str(torch_device),
    }
    for name, model in (("trained", loaded.trained), ("untrained", loaded.untrained)):
        scores = score_all_pairs(model, frames, tokens, token_mask, torch_device)
        rows = np.arange(len(clips))
        report[name] = {
            "video_to_text": retrieval_metrics(scores, relevant),
            "text_to_video": retrieval_metrics(scores.T, relevant.T),
            "alignment": alignment_metrics(scores[rows, rows], scores[rows[has_neg], negatives[has_neg]]),
        }
    chance = {f"R@{k}": round(chance_recall(relevant, k), 6) for k in KS}
    report["chance"] = {"video_to_text": dict(chance), "text_to_video": dict(chance),
                        "alignment": chance_alignment(len(clips), int(has_neg.sum()))}
    report["untrained_seed"] = int(loaded.blob["init_seed"])
    return report


def format_report(report: dict[str, Any]) -> str:
    """The side-by-side table `videobert evaluate` prints."""
    lines = [
        f"held-out: {report['clips']} clips with text ({report['distinct_texts']} distinct texts) from "
        f"{report['videos']} videos ({report['validation_videos']} used for early stopping, "
        f"{report['unseen_videos']} never seen)",
        f"{'':<24}{'trained':>10}{'untrained':>11}{'chance':>9}",
    ]
    for direction, label in (("video_to_text", "clip -> text"), ("text_to_video", "text -> clip")):
        for metric in [f"R@{k}" for k in KS] + ["median_rank"]:
            chance = report["chance"][direction].get(metric)
            lines.append(f"{label + ' ' + metric:<24}{report['trained'][direction][metric]:>10.3f}"
                         f"{report['untrained'][direction][metric]:>11.3f}"
                         + (f"{chance:>9.3f}" if chance is not None else f"{'-':>9}"))
    for metric in ("accuracy", "roc_auc"):
        lines.append(f"{'alignment ' + metric:<24}{report['trained']['alignment'][metric]:>10.3f}"
                     f"{report['untrained']['alignment'][metric]:>11.3f}"
                     f"{report['chance']['alignment'][metric]:>9.3f}")
    return "\n".join(lines)
