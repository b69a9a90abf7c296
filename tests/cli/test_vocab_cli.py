"""End to end: `videobert vocab` -> `tokenize` -> `validate`/`info` -> `export-sequences`, and `extract --visual-vocab`."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from media import write_video

from videobert_cli import open_features
from videobert_cli.cli.main import main
from videobert_cli.store import schema
from videobert_cli.store.reader import read_shard
from videobert_cli.store.vocab_file import read_vocab, write_vocab


def run(args: list) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


SRT = "1\n00:00:00,000 --> 00:00:01,500\nthe red square\n\n2\n00:00:01,500 --> 00:00:03,000\nmoves left\n"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, tiny_args: list[str]) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vocab")
    with torch.random.fork_rng(devices=[]):  # fixed untrained weights: the same network in every run
        torch.manual_seed(0)
        from torchvision.models import resnet18

        weights = root / "resnet18-untrained.pth"
        torch.save(resnet18().state_dict(), weights)
    videos = root / "videos"
    for k in range(3):
        write_video(videos / f"v{k}.mp4", fps=10, seconds=3, width=96, height=64)
        (videos / f"v{k}.srt").write_text(SRT, encoding="utf-8")
    args = [*tiny_args, "--video-weights", weights, "--set", "clip_seconds=0.5", "--shard-size", "8"]
    out = root / "features"
    result = run(["extract", videos, "-o", out, *args])
    assert result.exit_code == 0, result.output
    return {"root": root, "videos": videos, "features": out, "args": args, "weights": weights}


@pytest.fixture(scope="module")
def fitted(folder: dict[str, Path]) -> dict:
    vocab = folder["root"] / "vocab.h5"
    result = run(["vocab", folder["features"], "-o", vocab, "--branching", "3", "--depth", "2", "--seed", "1",
                  "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return {"path": vocab, "summary": json.loads(result.stdout)}


def test_vocab_summarises_the_fit_and_records_its_provenance(folder: dict[str, Path], fitted: dict):
    summary = fitted["summary"]
    assert summary["levels"] == 2 and summary["words_possible"] == 9 and 1 <= summary["words_used"] <= 9
    assert len(summary["inertia_per_level"]) == 2
    assert summary["inertia_per_level"][1] <= summary["inertia_per_level"][0]
    assert summary["sample_clips"] == summary["corpus_clips"] == 18
    vocab = read_vocab(fitted["path"])
    assert (vocab.branching, vocab.depth, vocab.field, vocab.seed) == (3, 2, "video_features", 1)
    assert [m["role"] for m in vocab.models] == ["video"] and vocab.models[0]["sha256"] != "random"
    assert len(vocab.sample["sha256"]) == 64 and vocab.sample["probe"]["sha256"]
    again = folder["root"] / "again.h5"
    result = run(["vocab", folder["features"], "-o", again, "--branching", "3", "--depth", "2", "--seed", "1",
                  "--device", "cpu"])
    assert result.exit_code == 0
    for a, b in zip(vocab.centroids, read_vocab(again).centroids):  # the same seed, the same tree
        assert np.array_equal(a, b)
    assert run(["vocab", folder["features"], "-o", again]).exit_code == 2  # exists, no --overwrite


def test_tokenize_adds_the_columns_atomically_and_validate_checks_them(folder: dict[str, Path], fitted: dict):
    work = folder["root"] / "tokenized"
    shutil.copytree(folder["features"], work)
    before = {p.name: read_shard(p) for p in sorted(work.glob("shard-*.h5"))}
    result = run(["tokenize", work, "--vocab", fitted["path"], "--device", "cpu", "--batch-size", "5"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["clips"] == 18 and len(summary["shards"]) == len(before) >= 2
    assert not list(work.glob("*.tmp"))
    for path in sorted(work.glob("shard-*.h5")):
        attrs, clips, videos = read_shard(path)
        old_attrs, old_clips, old_videos = before[path.name]
        for key, value in old_clips.items():  # everything else is as it was
            assert np.array_equal(value, clips[key]), key
        assert attrs[schema.SCHEMA_VERSION_ATTR] == 1 and attrs[schema.SCHEMA_MINOR_ATTR] == 1
        assert attrs["visual_vocab"]["branching"] == 3 and len(attrs["visual_vocab"]["sha256"]) == 64
        assert clips["visual_word"].dtype == np.int32 and clips["visual_path"].shape == (len(clips["start"]), 2)
    result = run(["validate", work, "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(run(["info", work, "--json"]).stdout)
    assert info["schema_minor"] == 1 and info["shards_with_visual_words"] == len(before)
    # the words equal an in-memory assignment of every clip at once
    from videobert_cli.vocab import assign

    features = open_features(work)
    words, _ = assign(read_vocab(fitted["path"]), features.array("video_features"))
    assert np.array_equal(words, features.array("visual_word"))
    # idempotent: tokenizing again replaces the columns, the files stay valid and the words equal
    first = features.array("visual_word")
    features.close()
    assert run(["tokenize", work, "--vocab", fitted["path"], "--device", "cpu"]).exit_code == 0
    assert np.array_equal(open_features(work).array("visual_word"), first)
    assert run(["validate", work]).exit_code == 0
    # a damaged word is a problem validate names
    shard = sorted(work.glob("shard-*.h5"))[0]
    with h5py.File(shard, "r+") as f:
        f["clips/visual_word"][0] = f["clips/visual_word"][0] + 1
    result = run(["validate", work, "--json"])
    assert result.exit_code == 1 and "disagree" in " ".join(json.loads(result.stdout)["problems"])


def test_a_shard_without_visual_words_still_opens_and_validates(folder: dict[str, Path]):
    features = open_features(folder["features"])
    assert features.num_clips == 18 and features.describe()["schema_minor"] == 1
    assert run(["validate", folder["features"]]).exit_code == 0
    # a version 1.0 shard (no schema_minor attribute) opens too
    old = folder["root"] / "old"
    shutil.copytree(folder["features"], old)
    for path in old.glob("shard-*.h5"):
        with h5py.File(path, "r+") as f:
            del f.attrs[schema.SCHEMA_MINOR_ATTR]
    assert open_features(old).describe()["schema_minor"] == 0
    assert run(["validate", old]).exit_code == 0


def test_export_sequences_interleaves_text_sep_and_visual_words(folder: dict[str, Path], fitted: dict):
    work = folder["root"] / "export"
    shutil.copytree(folder["features"], work)
    out = folder["root"] / "seqs.jsonl"
    assert run(["export-sequences", work, "-o", out]).exit_code == 2  # not tokenized yet
    assert run(["tokenize", work, "--vocab", fitted["path"], "--device", "cpu"]).exit_code == 0
    result = run(["export-sequences", work, "-o", out])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 3 and json.loads(result.stdout)["clips"] == 18
    row = rows[0]
    assert [c["start"] for c in row["clips"]] == sorted(c["start"] for c in row["clips"])
    first = row["clips"][0]
    assert first["text"]  # the first clip (0-0.5 s) holds words of the first cue
    words = first["text"].split()
    assert row["tokens"][: len(words) + 2] == [*words, "[SEP]", f"[V{first['visual_word']}]"]
    assert row["token_types"][: len(words) + 2] == [0] * len(words) + [1, 2]
    assert len(row["tokens"]) == len(row["start"]) == len(row["end"]) == len(row["token_types"])
    hf = folder["root"] / "seqs-hf.jsonl"
    assert run(["export-sequences", work, "-o", hf, "--format", "hf"]).exit_code == 0
    flat = [json.loads(line) for line in hf.read_text(encoding="utf-8").splitlines()]
    assert {tuple(sorted(r)) for r in flat} == {("end", "start", "text", "token_type_ids", "tokens", "video",
                                                 "visual_words")}
    for r in flat:  # one type per column, as datasets' json loader wants
        assert isinstance(r["text"], str) and all(isinstance(t, str) for t in r["tokens"])
        assert all(isinstance(v, int) for v in r["visual_words"] + r["token_type_ids"])
        assert all(isinstance(v, float) for v in r["start"] + r["end"])


def test_a_vocabulary_is_refused_on_features_of_other_models(folder: dict[str, Path], fitted: dict,
                                                            tiny_args: list[str]):
    other = folder["root"] / "random-features"  # `--video-weights random`: another network
    assert run(["extract", folder["videos"], "-o", other, *tiny_args, "--set", "clip_seconds=0.5"]).exit_code == 0
    result = run(["tokenize", other, "--vocab", fitted["path"], "--device", "cpu"])
    assert result.exit_code == 2 and "refusing" in result.stderr
    assert "visual_word" not in open_features(other).clip(0, fields=("visual_word",))
    # and one fitted on random weights fits only those very features
    random_vocab = folder["root"] / "random-vocab.h5"
    assert run(["vocab", other, "-o", random_vocab, "--branching", "2", "--depth", "2"]).exit_code == 0
    assert run(["tokenize", other, "--vocab", random_vocab]).exit_code == 0
    result = run(["tokenize", folder["features"], "--vocab", random_vocab])
    assert result.exit_code == 2 and "refusing" in result.stderr
    result = run(["extract", folder["videos"], "-o", folder["root"] / "never", *tiny_args,
                  "--visual-vocab", random_vocab])
    assert result.exit_code == 2 and "RANDOM" in result.stderr
    assert not list((folder["root"] / "never").glob("shard-*.h5"))
    not_vocab = folder["root"] / "not-vocab.h5"
    not_vocab.write_bytes(b"nope")
    assert run(["tokenize", folder["features"], "--vocab", not_vocab]).exit_code == 2


def test_extract_with_visual_vocab_writes_words_equal_to_tokenize(folder: dict[str, Path], fitted: dict):
    out = folder["root"] / "extract-words"
    result = run(["extract", folder["videos"], "-o", out, *folder["args"], "--visual-vocab", fitted["path"]])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["visual_words"]["clips"] == 18
    assert run(["validate", out]).exit_code == 0
    direct = open_features(out).array("visual_word")
    assert run(["tokenize", out, "--vocab", fitted["path"], "--device", "cpu"]).exit_code == 0
    assert np.array_equal(open_features(out).array("visual_word"), direct)


def test_vocab_file_round_trip(tmp_path: Path, fitted: dict):
    vocab = read_vocab(fitted["path"])
    copy = tmp_path / "copy.h5"
    sha = write_vocab(copy, vocab)
    again = read_vocab(copy)
    assert len(sha) == 64 and not (tmp_path / "copy.h5.tmp").exists()
    for a, b in zip(vocab.centroids + vocab.valid, again.centroids + again.valid):
        assert np.array_equal(a, b)
    assert (again.models, again.sample, again.fit, again.field) == (vocab.models, vocab.sample, vocab.fit, vocab.field)
    assert os.path.getsize(copy) > 0
