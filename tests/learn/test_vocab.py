"""The visual vocabulary: hierarchical k-means (learn/vocab.py) and assignment (videobert_cli/vocab.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from videobert_cli.learn.vocab import fit_tree, kmeans, sample_indices
from videobert_cli.vocab import VisualVocab, assign, paths_from_words, words_from_paths


def gaussians(levels: tuple[int, ...], per: int = 20, dim: int = 16, seed: int = 0, spread: float = 0.01):
    """Nested well-separated clusters: `levels[0]` far-apart groups, each holding `levels[1]` subgroups ...
    Returns (points (n, dim), the leaf cluster label of each point)."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((1, dim))
    scale = 100.0
    for k in levels:
        offsets = rng.normal(size=(len(centres), k, dim)) * scale
        centres = (centres[:, None, :] + offsets).reshape(-1, dim)
        scale /= 20
    labels = np.repeat(np.arange(len(centres)), per)
    points = centres[labels] + rng.normal(size=(len(labels), dim)) * spread
    order = rng.permutation(len(labels))
    return points[order].astype(np.float32), labels[order]


def vocab_of(x: np.ndarray, branching: int, depth: int, seed: int = 0, **kw) -> VisualVocab:
    centroids, valid, _ = fit_tree(torch.from_numpy(x), branching, depth, seed, **kw)
    return VisualVocab(branching, depth, "video_features", centroids, valid, [], seed)


def one_to_one(words: np.ndarray, labels: np.ndarray) -> bool:
    pairs = set(zip(words.tolist(), labels.tolist()))
    return len(pairs) == len(set(words.tolist())) == len(set(labels.tolist()))


def test_well_separated_gaussians_are_recovered_exactly():
    x, labels = gaussians((3, 3))
    vocab = vocab_of(x, branching=3, depth=2)
    words, paths = assign(vocab, x)
    assert one_to_one(words, labels)
    assert vocab.leaves() == 9 and paths.shape == (len(x), 2) and paths.min() >= 0
    assert np.array_equal(words, words_from_paths(paths, 3))
    assert np.array_equal(paths_from_words(words, 3, 2), paths)


def test_flat_kmeans_finds_separated_clusters_from_any_seed():
    x, labels = gaussians((5,), per=30)
    for seed in range(3):
        _, found, _ = kmeans(torch.from_numpy(x), 5, torch.Generator().manual_seed(seed))
        assert one_to_one(found.numpy(), labels)


def test_the_same_seed_gives_the_same_tree_and_another_seed_still_the_same_partition():
    x, labels = gaussians((2, 3), per=15, seed=3)
    a, b = vocab_of(x, 4, 2, seed=7), vocab_of(x, 4, 2, seed=7)
    for ca, cb in zip(a.centroids, b.centroids):
        assert np.array_equal(ca, cb)
    assert np.array_equal(assign(a, x)[0], assign(b, x)[0])


def test_streaming_in_small_batches_equals_all_at_once():
    x, _ = gaussians((3, 2), per=25, seed=1)
    vocab = vocab_of(x, 3, 2)
    whole = assign(vocab, x, batch_size=len(x))
    batched = assign(vocab, x, batch_size=7)
    blocks = assign(vocab, iter([x[:40], x[40:41], x[41:]]), batch_size=16)
    for other in (batched, blocks):
        assert np.array_equal(whole[0], other[0]) and np.array_equal(whole[1], other[1])


def test_a_branch_with_fewer_points_than_branching_stops_early_and_keeps_stable_ids():
    x, labels = gaussians((2,), per=30, seed=2)
    x = np.concatenate([x[labels == 0], x[labels == 1][:2]])  # the second cluster has 2 points < branching 3
    vocab = vocab_of(x, branching=3, depth=2)
    words, paths = assign(vocab, x)
    small = paths[-2:]
    assert np.all(small[:, 1] == -1) and np.all(small[:, 0] == small[0, 0])  # stopped at level 0
    assert np.all(words[-2:] == small[0, 0] * 3)  # path (k, -1) reads as k*3 + 0
    assert np.all(paths[:-2, 1] >= 0)
    assert vocab.leaves() == 2 * 3 + 1  # the big cluster splits in two at level 0, each into 3


def test_an_empty_cluster_is_reseeded_and_duplicates_give_fewer_children():
    # k-means++ picks distinct points; Lloyd can still empty a cluster: it is re-seeded, never NaN.
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(50, 4)), rng.normal(size=(2, 4)) + 1000]).astype(np.float32)
    centroids, labels, _ = kmeans(torch.from_numpy(x), 6, torch.Generator().manual_seed(0))
    assert torch.isfinite(centroids).all() and len(torch.unique(labels)) == 6
    same = np.ones((10, 4), dtype=np.float32)  # one distinct point: one cluster only
    centroids, labels, _ = kmeans(torch.from_numpy(same), 3, torch.Generator().manual_seed(0))
    assert len(centroids) == 1 and labels.unique().tolist() == [0]


def test_the_sample_is_seeded_sorted_and_everything_when_small():
    a, b = sample_indices(1000, 100, 5), sample_indices(1000, 100, 5)
    assert np.array_equal(a, b) and np.all(np.diff(a) > 0) and len(a) == 100
    assert not np.array_equal(a, sample_indices(1000, 100, 6))
    assert np.array_equal(sample_indices(50, 100, 0), np.arange(50))


@pytest.mark.parametrize("branching,depth", [(2, 1), (4, 3)])
def test_word_ids_are_within_branching_to_the_depth(branching: int, depth: int):
    x, _ = gaussians((4,), per=10, seed=4)
    vocab = vocab_of(x, branching, depth)
    words, paths = assign(vocab, x)
    assert words.dtype == np.int32 and paths.dtype == np.int32
    assert words.min() >= 0 and words.max() < branching ** depth
