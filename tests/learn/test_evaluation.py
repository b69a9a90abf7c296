"""`videobert evaluate`: the metric functions on hand-computed cases, and the driver's numbers on a
hand-built features folder whose scores are known."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from handmade import random_corpus, write_features

from videobert_cli.learn import evaluation
from videobert_cli.learn.evaluation import (accuracy, alignment_metrics, chance_recall, first_relevant_ranks, median_rank,
                                      pick_negatives, recall_at_k, retrieval_metrics, roc_auc)
from videobert_cli.cli.learn import evaluate
from videobert_cli.learn.corpus import open_corpus, text_key
from videobert_cli.learn.training import TrainConfig, train


def test_ranks_recall_and_median_on_a_hand_computed_matrix() -> None:
    scores = np.array([[0.9, 0.1, 0.5],
                       [0.2, 0.3, 0.8],
                       [0.4, 0.4, 0.1]])
    ranks = first_relevant_ranks(scores, np.eye(3, dtype=bool))
    assert ranks.tolist() == [1, 2, 3]
    assert recall_at_k(ranks, 1) == pytest.approx(1 / 3) and recall_at_k(ranks, 2) == pytest.approx(2 / 3)
    assert recall_at_k(ranks, 10) == 1.0 and median_rank(ranks) == 2.0


def test_ties_count_against_the_model_and_any_relevant_candidate_counts() -> None:
    assert first_relevant_ranks(np.array([[0.4, 0.4]]), np.array([[True, False]])).tolist() == [2]
    constant = np.zeros((4, 4))
    assert first_relevant_ranks(constant, np.eye(4, dtype=bool)).tolist() == [4, 4, 4, 4]
    # Two relevant candidates (the same text twice): the better one decides.
    assert first_relevant_ranks(np.array([[0.1, 0.9, 0.5]]), np.array([[True, True, False]])).tolist() == [1]
    with pytest.raises(ValueError, match="relevant"):
        first_relevant_ranks(np.zeros((1, 2)), np.zeros((1, 2), dtype=bool))


def test_roc_auc_by_hand() -> None:
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert roc_auc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
    assert roc_auc([1, 2, 3, 4], [1, 1, 0, 0]) == 0.0
    assert roc_auc([0.5, 0.5, 0.5], [1, 0, 0]) == 0.5  # ties count one half
    assert roc_auc([1, 2, 2, 3], [0, 1, 0, 1]) == pytest.approx(0.875)  # (1 + 0.5 + 1 + 1) / 4
    assert math.isnan(roc_auc([1, 2], [1, 1]))


def test_accuracy_is_at_logit_zero() -> None:
    assert accuracy([2.0, -1.0, 0.5, 0.0], [1, 0, 0, 1]) == 0.5
    assert alignment_metrics(np.array([1.0, 2.0]), np.array([-1.0, 3.0])) == {
        "accuracy": 0.75, "roc_auc": 0.5, "pairs": 4}


def test_chance_recall_matches_brute_force_over_all_rankings() -> None:
    relevant = np.array([[1, 1, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 1, 1]], dtype=bool)
    n = relevant.shape[1]
    for k in (1, 2, 3, 5):
        hits = []
        for order in itertools.permutations(range(n)):
            hits.extend(relevant[q, list(order[:k])].any() for q in range(len(relevant)))
        assert chance_recall(relevant, k) == pytest.approx(np.mean(hits)), k
    assert chance_recall(np.eye(4, dtype=bool), 1) == 0.25


def test_negatives_never_share_the_text_and_follow_the_video_share() -> None:
    clip_video = np.array([0, 0, 0, 1, 1, 2])
    keys = np.array([7, 8, 7, 7, 9, 10])
    for share, same in ((1.0, True), (0.0, False)):
        neg = pick_negatives(clip_video, keys, seed=3, same_video_share=share)
        for i, j in enumerate(neg):
            assert j >= 0 and keys[j] != keys[i]
            if share == 1.0 and np.any((clip_video == clip_video[i]) & (keys != keys[i])):
                assert clip_video[j] == clip_video[i]
            if share == 0.0:
                assert clip_video[j] != clip_video[i]
    assert pick_negatives(np.array([0, 1]), np.array([5, 5]), 0, 0.5).tolist() == [-1, -1]
    np.testing.assert_array_equal(pick_negatives(clip_video, keys, 1, 0.5), pick_negatives(clip_video, keys, 1, 0.5))


# ------------------------------------------------------------------------------------------ driver


def _clip(rng: np.random.Generator, ids: list[int], text: str):
    return rng.normal(size=(2, 12)), rng.normal(size=(len(ids), 8)), np.array(ids), text


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    features = random_corpus(root / "train-features", n_videos=4, clips_per_video=3)
    path = root / "fusion.pt"
    train(features, path, TrainConfig(epochs=1, batch_size=4, device="cpu"))
    rng = np.random.default_rng(0)
    held_out = write_features(root / "held-out", {
        "a.mp4": [_clip(rng, [1, 2], "red square"), _clip(rng, [3, 4], "blue circle")],
        "b.mp4": [_clip(rng, [1, 2], "red square"), _clip(rng, [5], "green")],
    })
    return {"path": path, "train_features": features, "held_out": held_out}


# S[i, j] = score of (clip i's frames, clip j's text); clips 0 and 2 have the same text.
KNOWN = np.array([[5.0, 1.0, 4.0, 0.0],
                  [2.0, 3.0, -1.0, 6.0],
                  [1.0, -2.0, 2.0, 3.0],
                  [-3.0, 1.0, 2.0, 1.0]])


def test_evaluate_reports_the_known_answers(checkpoint: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_scores(model, frames, tokens, token_mask, device):
        calls.append(model)
        return KNOWN if len(calls) == 1 else np.zeros_like(KNOWN)  # trained first, then the untrained seed

    monkeypatch.setattr(evaluation, "score_all_pairs", fake_scores)
    result = CliRunner().invoke(evaluate, [str(checkpoint["held_out"]), "--fusion-checkpoint", str(checkpoint["path"]),
                                           "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["clips"], report["videos"], report["distinct_texts"], report["unseen_videos"]) == (4, 2, 3, 2)
    # clip -> text: ranks 1, 2 (6 > 3), 2 (3 > 2), 3 (2 > 1 and a tie at 1).
    v2t = report["trained"]["video_to_text"]
    assert (v2t["R@1"], v2t["R@5"], v2t["median_rank"], v2t["mean_rank"]) == (0.25, 1.0, 2.0, 2.0)
    # text -> clip (columns): ranks 1, 1, 1, 3 (6 and 3 above 1).
    t2v = report["trained"]["text_to_video"]
    assert (t2v["R@1"], t2v["R@5"], t2v["median_rank"], t2v["mean_rank"]) == (0.75, 1.0, 1.0, 1.5)
    # Alignment: each clip's own pair against its drawn negative (never a clip with the same text).
    keys = np.array([text_key(np.array(ids)) for ids in ([1, 2], [3, 4], [1, 2], [5])])
    negatives = pick_negatives(np.array([0, 0, 1, 1]), keys, seed=0, same_video_share=0.5)
    negative_scores = KNOWN[np.arange(4), negatives]
    correct = 4 + int((negative_scores <= 0).sum())  # positives 5, 3, 2, 1 are all > 0
    wins = sum((p > n) + 0.5 * (p == n) for p in np.diag(KNOWN) for n in negative_scores)
    alignment = report["trained"]["alignment"]
    assert alignment["pairs"] == 8 and alignment["accuracy"] == pytest.approx(correct / 8)
    assert alignment["roc_auc"] == pytest.approx(wins / 16)
    # Constant scores get no credit: every tie ranks the relevant candidate last.
    untrained = report["untrained"]
    assert untrained["video_to_text"]["R@1"] == 0.0 and untrained["video_to_text"]["median_rank"] == 3.5
    assert untrained["alignment"]["roc_auc"] == 0.5 and untrained["alignment"]["accuracy"] == 0.5
    # Chance: 2, 1, 2, 1 relevant texts out of 4.
    assert report["chance"]["video_to_text"]["R@1"] == pytest.approx(0.375)
    assert report["chance"]["text_to_video"]["R@5"] == 1.0


def test_the_score_matrix_is_clip_by_text(checkpoint: dict[str, Path]) -> None:
    """S[i, j] must be the head on fuse(frames of clip i, tokens of text j), not the transpose."""
    from videobert_cli.learn.training import load_trained

    corpus = open_corpus(checkpoint["held_out"])
    model = load_trained(checkpoint["path"], corpus).trained
    rng = np.random.default_rng(1)
    frames = torch.from_numpy(rng.normal(size=(3, 2, 12)).astype(np.float32))
    tokens = torch.from_numpy(rng.normal(size=(3, 2, 8)).astype(np.float32))
    mask = torch.tensor([[True, True], [True, False], [True, True]])
    scores = evaluation.score_all_pairs(model, frames, tokens, mask, torch.device("cpu"))
    with torch.no_grad():
        for i in range(3):
            for j in range(3):
                fused, _ = model.fusion(frames[i : i + 1], tokens[j : j + 1], mask[j : j + 1])
                assert scores[i, j] == pytest.approx(float(model.head(fused)[0]), abs=1e-5)
    assert not np.allclose(scores, scores.T)


def test_evaluate_holds_out_only_videos_it_did_not_train_on(checkpoint: dict[str, Path]) -> None:
    blob = torch.load(checkpoint["path"], weights_only=True)
    report = evaluation.evaluate(checkpoint["train_features"], checkpoint["path"], device="cpu")
    assert report["videos"] == len(blob["data"]["val_videos"]) == report["validation_videos"]
    assert report["unseen_videos"] == 0
    text = evaluation.format_report(report)
    assert "clip -> text R@1" in text and "alignment roc_auc" in text and "used for early stopping" in text


def test_retrieval_metrics_keys() -> None:
    out = retrieval_metrics(np.eye(3), np.eye(3, dtype=bool))
    assert out == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "median_rank": 1.0, "mean_rank": 1.0}


def test_chance_alignment_follows_the_pairs_actually_scored(checkpoint: dict[str, Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A clip without a negative adds a positive and no negative: chance accuracy is then the best
    constant guess over the pairs scored (here 4 positives, 3 negatives: 4/7), not 0.5."""
    real = evaluation.pick_negatives

    def one_missing(*args, **kwargs):
        negatives = real(*args, **kwargs)
        negatives[0] = -1
        return negatives

    monkeypatch.setattr(evaluation, "pick_negatives", one_missing)
    report = evaluation.evaluate(checkpoint["held_out"], checkpoint["path"], device="cpu")
    assert report["trained"]["alignment"]["pairs"] == 7
    chance = report["chance"]["alignment"]
    assert chance["accuracy"] == pytest.approx(4 / 7, abs=1e-6) and chance["roc_auc"] == 0.5
    assert (chance["positives"], chance["negatives"]) == (4, 3)
    row = next(line for line in evaluation.format_report(report).splitlines() if "alignment accuracy" in line)
    assert row.split()[-1] == f"{4 / 7:.3f}"
    assert evaluation.chance_alignment(2, 2) == {"accuracy": 0.5, "roc_auc": 0.5, "positives": 2, "negatives": 2}
    assert evaluation.chance_alignment(3, 0)["accuracy"] == 1.0
