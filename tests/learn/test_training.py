"""`videobert train` / `evaluate` / `fuse`.

The main test learns on a generated corpus whose transcripts describe the picture (coloured shapes,
tests/shapes.py), extracted with the tiny models, and checks retrieval on held-out videos that show
colour/shape combinations never seen in training. Faster unit tests use hand-built features
(tests/handmade.py).
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from handmade import MODELS, random_corpus
from shapes import make_shapes_corpus

from videobert_cli import open_features
from videobert_cli.cli.main import main
from videobert_cli.fusion import CrossModalFusion, FusionConfig, build_fusion, save_fusion
from videobert_cli.weights.resolve import ModelError, sha256_file
from videobert_cli.learn.corpus import Corpus, TrainingError, open_corpus, split_videos, video_key
from videobert_cli.learn.training import TrainConfig, load_trained
from videobert_cli.learn.training import train as train_library


def run(args: list[str]):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def split(corpus: Corpus, **options: object) -> tuple[np.ndarray, np.ndarray]:
    """The split `train` makes with these options (the others at their defaults)."""
    config = TrainConfig(**options)
    return split_videos(corpus, seed=config.seed, val_fraction=config.val_fraction, val_videos=config.val_videos)


@contextmanager
def one_thread() -> Iterator[None]:
    """The tiny tensors here are dominated by threading overhead: one thread is faster and keeps the
    timing steady on a shared 2-core machine. (extract sets the thread count itself, so this wraps
    each training run, not the module.)"""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _one_thread_per_test() -> Iterator[None]:
    with one_thread():
        yield


# --------------------------------------------------------------------------- the synthetic corpus


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory, tiny_args: list[str]) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shapes")
    # Untrained but fixed image weights: `--video-weights random` draws new weights in every extract run,
    # so the held-out features (a second run) would come from another network. A saved file is the same
    # network in both runs, and is recorded by its sha256.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        from torchvision.models import resnet18

        weights = root / "resnet18-untrained.pth"
        torch.save(resnet18().state_dict(), weights)
    videos = make_shapes_corpus(root / "videos", train_videos=64, heldout_videos=12)
    out = {"root": root, "weights": weights, "videos": root / "videos"}
    for part in ("train", "heldout"):
        out[part] = root / f"features-{part}"
        result = run(["extract", root / "videos" / part, "-o", out[part], "--save-frames", "--save-tokens",
                      *tiny_args, "--video-weights", weights])
        assert result.exit_code == 0, result.stderr
    out["heldout_videos"] = videos["heldout"]
    return out


TRAIN_ARGS = ["--seed", "0", "--epochs", "20", "--patience", "8", "--batch-size", "32", "--lr", "3e-3",
              "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(shapes: dict[str, Path]) -> dict:
    checkpoint = shapes["root"] / "fusion.pt"
    with one_thread():
        result = run(["train", shapes["train"], "-o", checkpoint, *TRAIN_ARGS])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""  # no progress bar when stderr is not a terminal; no warning for a weights file
    return {"checkpoint": checkpoint, "summary": json.loads(result.stdout)}


def test_training_learns_to_pair_held_out_combinations(shapes: dict[str, Path], trained: dict) -> None:
    result = run(["evaluate", shapes["heldout"], "--fusion-checkpoint", trained["checkpoint"], "--device", "cpu",
                  "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    # 12 videos never seen in training, mostly showing colour/shape pairs that no training video shows.
    assert report["videos"] == 12 and report["unseen_videos"] == 12 and report["clips"] == 36
    summary = trained["summary"]
    print(f"\ntraining: {summary['train_clips']} clips, {summary['epochs_run']} epochs in {summary['seconds']} s, "
          f"{summary['steps_per_second']} steps/s, {summary['clips_per_second']} clips/s")
    for direction in ("video_to_text", "text_to_video"):
        t, u, c = (report[k][direction] for k in ("trained", "untrained", "chance"))
        print(f"{direction}: trained R@1 {t['R@1']:.3f} R@5 {t['R@5']:.3f} median {t['median_rank']}; "
              f"untrained R@1 {u['R@1']:.3f} R@5 {u['R@5']:.3f} median {u['median_rank']}; "
              f"chance R@1 {c['R@1']:.3f} R@5 {c['R@5']:.3f}")
        assert t["R@1"] >= 3 * c["R@1"], direction
        assert t["R@1"] > u["R@1"] and t["R@5"] > u["R@5"] and t["median_rank"] < u["median_rank"], direction
    t, u = report["trained"]["alignment"], report["untrained"]["alignment"]
    print(f"alignment: trained acc {t['accuracy']:.3f} AUC {t['roc_auc']:.3f}; "
          f"untrained acc {u['accuracy']:.3f} AUC {u['roc_auc']:.3f}")
    assert t["roc_auc"] > 0.7 and t["roc_auc"] > u["roc_auc"] + 0.1 and t["accuracy"] > 0.6


def test_checkpoint_records_models_metrics_split_and_data(shapes: dict[str, Path], trained: dict) -> None:
    blob = torch.load(trained["checkpoint"], weights_only=True)
    assert blob["config"] == {"video_dim": 512, "text_dim": 32, "dim": 32, "heads": 4}
    shard_models = {m["role"]: m for m in open_features(shapes["train"]).attrs[0]["models"]}
    assert blob["feature_models"] == [{"role": r, "name": shard_models[r]["name"], "sha256": shard_models[r]["sha256"]}
                                      for r in ("video", "text")]
    assert blob["feature_models"][0]["sha256"] == sha256_file(shapes["weights"])
    metrics = blob["training"]["metrics"]
    assert len(metrics["history"]) == metrics["epochs_run"] and 1 <= metrics["best_epoch"] <= metrics["epochs_run"]
    assert metrics["best"]["val_loss"] == min(h["val_loss"] for h in metrics["history"])
    assert blob["training"]["config"]["lr"] == 3e-3 and blob["init_seed"] == 0
    # Split by video: disjoint, every training-folder video on one side, clips counted per side.
    data = blob["data"]
    corpus = open_corpus(shapes["train"])
    assert not set(data["train_videos"]) & set(data["val_videos"])
    assert set(data["train_videos"]) | set(data["val_videos"]) == set(corpus.video_keys)
    assert (len(data["train_videos"]), len(data["val_videos"])) == (51, 13)
    assert data["train_clips"] + data["val_clips"] == corpus.features.num_clips == 192
    # The fingerprint is recomputed from the same features and split.
    index = {key: i for i, key in enumerate(corpus.video_keys)}
    split = [np.array(sorted(index[k] for k in data[part])) for part in ("train_videos", "val_videos")]
    assert data["fingerprint"] == corpus.fingerprint(*split) == trained["summary"]["fingerprint"]


def test_extract_uses_the_trained_weights_and_fuse_agrees(shapes: dict[str, Path], trained: dict,
                                                         tiny_args: list[str]) -> None:
    checkpoint = trained["checkpoint"]
    refused = shapes["root"] / "refused"
    result = run(["fuse", shapes["heldout"], "--fusion-checkpoint", checkpoint, "-o", refused, "--device", "cpu"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["clips"] == 36
    # `extract --fusion-checkpoint` on two of the videos gives the same fused vectors.
    direct = shapes["root"] / "direct"
    two = shapes["heldout_videos"][:2]
    result = run(["extract", *two, "-o", direct, "--save-frames", "--save-tokens", *tiny_args,
                  "--video-weights", shapes["weights"], "--fusion-checkpoint", checkpoint])
    assert result.exit_code == 0, result.stderr
    fused_direct = _fused_by_clip(direct)
    fused_refused = _fused_by_clip(refused)
    fused_seed = _fused_by_clip(shapes["heldout"])
    assert len(fused_direct) == 6
    for key, vector in fused_direct.items():
        np.testing.assert_allclose(fused_refused[key], vector, rtol=1e-4, atol=1e-5)
        assert not np.allclose(fused_seed[key], vector, atol=1e-3)  # the trained weights were used
    # Same schema: every dataset and attribute of the source, only the fusion's differ.
    source, new = sorted(shapes["heldout"].glob("shard-*.h5")), sorted(refused.glob("shard-*.h5"))
    assert [p.name for p in source] == [p.name for p in new]
    with h5py.File(source[0]) as a, h5py.File(new[0]) as b:
        names_a, names_b = _datasets(a), _datasets(b)
        assert names_a.keys() == names_b.keys() and set(a.attrs) == set(b.attrs)
        for name, (shape, dtype) in names_a.items():
            assert names_b[name] == (shape, dtype), name
            if name != "clips/fused":
                assert np.array_equal(a[name][()], b[name][()]), name
        models = {m["role"]: m for m in json.loads(b.attrs["models"])}
        assert models["fusion"]["sha256"] == sha256_file(checkpoint)
        assert json.loads(b.attrs["config"])["fusion_checkpoint"] == str(checkpoint)
        assert json.loads(b.attrs["models"])[:2] == json.loads(a.attrs["models"])[:2]
    # The re-fused folder can itself be evaluated (it still has the frame and token features).
    assert run(["evaluate", refused, "--fusion-checkpoint", checkpoint, "--device", "cpu", "--json"]).exit_code == 0
    # Existing output needs --overwrite.
    again = run(["fuse", shapes["heldout"], "--fusion-checkpoint", checkpoint, "-o", refused])
    assert again.exit_code == 2 and "--overwrite" in again.stderr


def test_fuse_with_the_seed_weights_reproduces_extract(shapes: dict[str, Path]) -> None:
    """Re-fusing with the fusion extract used (seed 0) gives back the stored fused vectors."""
    seed_checkpoint = shapes["root"] / "seed0.pt"
    module, _ = build_fusion(FusionConfig(512, 32, 32, 4), 0, None)
    save_fusion(module, seed_checkpoint)
    out = shapes["root"] / "seed-refused"
    result = run(["fuse", shapes["heldout"], "--fusion-checkpoint", seed_checkpoint, "-o", out, "--batch-size", "5"])
    assert result.exit_code == 0, result.stderr
    original, again = _fused_by_clip(shapes["heldout"]), _fused_by_clip(out)
    assert original.keys() == again.keys()
    for key in original:
        np.testing.assert_allclose(again[key], original[key], rtol=1e-4, atol=1e-5)


def _fused_by_clip(folder: Path) -> dict[tuple[str, float], np.ndarray]:
    feats = open_features(folder)
    out = {}
    for video in feats.videos:
        for i in range(video["first_clip"], video["first_clip"] + video["clip_count"]):
            clip = feats.clip(i, fields=("fused", "start"))
            out[(video["abspath"], clip["start"])] = clip["fused"]
    return out


def _datasets(f: h5py.File) -> dict[str, tuple[tuple[int, ...], str]]:
    out = {}
    f.visititems(lambda name, obj: out.__setitem__(name, (obj.shape, str(obj.dtype)))
                 if isinstance(obj, h5py.Dataset) else None)
    return out


# ------------------------------------------------------------------------- hand-built features


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_corpus(tmp_path_factory.mktemp("toy") / "features", n_videos=8, clips_per_video=3,
                         videos_per_shard=3)


def _state(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def test_same_seed_same_checkpoint_other_seed_other_one(toy: Path, tmp_path: Path) -> None:
    config = TrainConfig(seed=0, epochs=3, patience=3, batch_size=4, lr=3e-3, device="cpu")
    a = train_library(toy, tmp_path / "a.pt", config)
    b = train_library(toy, tmp_path / "b.pt", TrainConfig(**{**config.__dict__, "workers": 2}))
    c = train_library(toy, tmp_path / "c.pt", TrainConfig(**{**config.__dict__, "seed": 1}))
    d = train_library(toy, tmp_path / "d.pt", TrainConfig(**{**config.__dict__, "cache_mb": 0}))
    sa, sb, sc = _state(tmp_path / "a.pt"), _state(tmp_path / "b.pt"), _state(tmp_path / "c.pt")
    # Bitwise the same, also when worker processes read the shards, and when nothing is cached.
    assert a.history == b.history == d.history
    for key in sa["state_dict"]:
        assert torch.equal(sa["state_dict"][key], sb["state_dict"][key]), key
    for key in sa["head_state_dict"]:
        assert torch.equal(sa["head_state_dict"][key], sb["head_state_dict"][key]), key
    assert a.fingerprint == b.fingerprint
    assert a.history != c.history
    assert any(not torch.equal(sa["state_dict"][k], sc["state_dict"][k]) for k in sa["state_dict"])
    # Evaluation is deterministic too.
    from videobert_cli.learn.evaluation import evaluate as evaluate_library

    first, second = (evaluate_library(toy, tmp_path / name, device="cpu") for name in ("a.pt", "b.pt"))
    first.pop("checkpoint"), second.pop("checkpoint")
    assert first == second


def test_split_is_by_video_seeded_and_follows_the_glob(toy: Path) -> None:
    corpus = open_corpus(toy)
    train_v, val_v = split(corpus, seed=0, val_fraction=0.25)
    assert len(val_v) == 2 and len(train_v) == 6 and not set(train_v) & set(val_v)
    train_c, val_c = corpus.text_clips(train_v), corpus.text_clips(val_v)
    assert not set(corpus.clip_video[train_c]) & set(corpus.clip_video[val_c])  # no video on both sides
    assert len(train_c) + len(val_c) == corpus.features.num_clips
    again = split(corpus, seed=0, val_fraction=0.25)
    assert np.array_equal(again[1], val_v)
    splits = {tuple(split(corpus, seed=s, val_fraction=0.25)[1]) for s in range(6)}
    assert len(splits) > 1  # the seed chooses
    chosen = split(corpus, val_videos="*/v0[12].mp4")[1]
    assert [corpus.videos[i]["path"] for i in chosen] == ["v01.mp4", "v02.mp4"]
    with pytest.raises(TrainingError, match="matches no video"):
        split(corpus, val_videos="*nothing*")


def test_checkpoint_round_trip(toy: Path, tmp_path: Path) -> None:
    path = tmp_path / "fusion.pt"
    train_library(toy, path, TrainConfig(epochs=2, batch_size=4, device="cpu"))
    blob = _state(path)
    loaded = load_trained(path, open_corpus(toy))
    for key, value in blob["state_dict"].items():
        assert torch.equal(loaded.trained.fusion.state_dict()[key], value)
    for key, value in blob["head_state_dict"].items():
        assert torch.equal(loaded.trained.head.state_dict()[key], value)
    # The same file is an ordinary fusion checkpoint for extract (build_fusion), checked against the models.
    module, record = build_fusion(FusionConfig(12, 8), 0, str(path), feature_models=MODELS)
    for key, value in blob["state_dict"].items():
        assert torch.equal(module.state_dict()[key], value)
    assert record.sha256 == sha256_file(path)
    # The untrained baseline is exactly the seed's starting point (the fusion extract uses with that seed).
    seed_module, _ = build_fusion(FusionConfig(12, 8, 8, 2), 0, None)
    for key, value in seed_module.state_dict().items():
        assert torch.equal(loaded.untrained.fusion.state_dict()[key], value)


def test_a_checkpoint_for_other_feature_models_is_refused(toy: Path, tmp_path: Path) -> None:
    path = tmp_path / "fusion.pt"
    train_library(toy, path, TrainConfig(epochs=1, batch_size=4, device="cpu"))
    other_models = [dict(m, sha256="c" * 64) if m["role"] == "text" else m for m in MODELS]
    other = random_corpus(tmp_path / "other", n_videos=3, models=other_models)
    for command in (["evaluate", other, "--fusion-checkpoint", path],
                    ["fuse", other, "--fusion-checkpoint", path, "-o", tmp_path / "out"]):
        result = run(command)
        assert result.exit_code == 2, command
        assert "refusing" in result.stderr and "handmade-text (sha256 cccccccccccc)" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not list((tmp_path / "out").glob("shard-*.h5"))
    with pytest.raises(ModelError, match="refusing"):  # what extract --fusion-checkpoint does
        build_fusion(FusionConfig(12, 8), 0, str(path), feature_models=other_models)
    # Other feature widths are refused too.
    wide = random_corpus(tmp_path / "wide", n_videos=3, video_dim=16)
    result = run(["evaluate", wide, "--fusion-checkpoint", path])
    assert result.exit_code == 2 and "width" in result.stderr
    # A file that is no checkpoint at all.
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert run(["evaluate", toy, "--fusion-checkpoint", junk]).exit_code == 2
    plain = tmp_path / "plain.pt"
    save_fusion(CrossModalFusion(FusionConfig(12, 8, 8, 2)), plain)
    result = run(["evaluate", toy, "--fusion-checkpoint", plain])
    assert result.exit_code == 2 and "alignment head" in result.stderr


def test_random_weights_fit_only_the_features_they_were_trained_on(tmp_path: Path) -> None:
    random_models = [dict(m, sha256="random", source="random") if m["role"] == "video" else m for m in MODELS]
    features = random_corpus(tmp_path / "a", n_videos=4, models=random_models)
    path = tmp_path / "fusion.pt"
    train_library(features, path, TrainConfig(epochs=1, batch_size=4, device="cpu"))
    assert run(["evaluate", features, "--fusion-checkpoint", path, "--json"]).exit_code == 0
    # Another extract run with random weights (here: other features, same records) is refused ...
    other = random_corpus(tmp_path / "b", n_videos=4, models=random_models, seed=5)
    result = run(["evaluate", other, "--fusion-checkpoint", path])
    assert result.exit_code == 2 and "RANDOM" in result.stderr
    # ... also when it has the same videos, if their features differ (checked on a training clip).
    changed = tmp_path / "c"
    shutil.copytree(features, changed)
    for shard in changed.glob("shard-*.h5"):
        with h5py.File(shard, "r+") as f:
            f["clips/frame_features"][...] = f["clips/frame_features"][()] * 1.01
    assert run(["evaluate", changed, "--fusion-checkpoint", path]).exit_code == 2
    # Extraction draws new random weights in every run: never accepted there.
    with pytest.raises(ModelError, match="RANDOM"):
        build_fusion(FusionConfig(12, 8), 0, str(path), feature_models=random_models)
    # Training on random weights says so.
    result = run(["train", features, "-o", tmp_path / "again.pt", "--epochs", "1", "--batch-size", "4"])
    assert result.exit_code == 0 and "RANDOM" in result.stderr


def test_features_without_frames_or_tokens_are_refused_naming_the_flags(toy: Path, tmp_path: Path) -> None:
    for dataset, flag in (("clips/frame_features", "--save-frames"), ("tokens", "--save-tokens")):
        copy = tmp_path / flag.strip("-")
        shutil.copytree(toy, copy)
        with h5py.File(next(copy.glob("shard-*.h5")), "r+") as f:
            del f[dataset]
        for command in (["train", copy, "-o", tmp_path / "x.pt"],
                        ["fuse", copy, "--fusion-checkpoint", tmp_path / "x.pt", "-o", tmp_path / "y"]):
            result = run(command)
            assert result.exit_code == 2 and flag in result.stderr, (command, result.stderr)
            assert len(result.stderr.strip().splitlines()) == 1


def test_usage_errors_and_a_diverging_run(toy: Path, tmp_path: Path) -> None:
    out = tmp_path / "fusion.pt"
    assert run(["train", toy, "-o", out, "--epochs", "1", "--batch-size", "4", "-q"]).exit_code == 0
    result = run(["train", toy, "-o", out, "--epochs", "1"])
    assert result.exit_code == 2 and "--overwrite" in result.stderr
    assert run(["train", toy, "-o", out, "--overwrite", "--epochs", "1", "--batch-size", "4", "-q"]).exit_code == 0
    for bad in (["--lr", "-1"], ["--val-fraction", "1.5"], ["--val-videos", "*nothing*"], ["--batch-size", "1"],
                ["--dim", "10", "--heads", "4"], ["--device", "cuda:7"] if not torch.cuda.is_available() else []):
        if bad:
            result = run(["train", toy, "-o", tmp_path / "bad.pt", *bad])
            assert result.exit_code == 2, bad
            assert result.stderr.startswith("videobert: error:") and len(result.stderr.strip().splitlines()) == 1
    result = run(["train", toy, "-o", tmp_path / "nan.pt", "--lr", "1e30", "--epochs", "2", "--batch-size", "4"])
    assert result.exit_code == 1 and "lower --lr" in result.stderr
    assert not (tmp_path / "nan.pt").exists()

def test_a_video_is_known_by_its_file_not_its_folder(toy: Path, tmp_path: Path) -> None:
    video = {"abspath": "/a/talk.mp4", "size": 10, "frame_count": 30, "duration": 3.0}
    assert video_key(video) == video_key({**video, "abspath": "/elsewhere/talk.mp4"})
    assert video_key(video) != video_key({**video, "size": 11}) != video_key({**video, "abspath": "/a/b.mp4"})
    # A moved copy of the training features: the same split, and nothing counts as held out.
    moved = tmp_path / "moved"
    shutil.copytree(toy, moved)
    for shard in moved.glob("shard-*.h5"):
        with h5py.File(shard, "r+") as f:
            names = [Path(p.decode()).name for p in f["videos/abspath"][()]]
            f["videos/abspath"][...] = [f"/somewhere/else/{name}" for name in names]
    assert open_features(moved).videos[0]["abspath"].startswith("/somewhere/else/")
    path = tmp_path / "fusion.pt"
    train_library(toy, path, TrainConfig(epochs=1, batch_size=4, device="cpu"))
    assert split(open_corpus(moved))[1].tolist() == split(open_corpus(toy))[1].tolist()
    result = run(["evaluate", moved, "--fusion-checkpoint", path, "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["unseen_videos"] == 0


def _malformed(source: Path, folder: Path) -> dict[str, Path]:
    """Two broken copies of a checkpoint: an unknown key in its config (FusionConfig(**config) raises
    TypeError), and a config whose width does not fit its state dict (load_state_dict raises RuntimeError)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, change in (("unknown-key", {"bogus": 1}), ("mismatch", {"dim": 16})):
        blob = torch.load(source, weights_only=True)
        blob["config"] = {**blob["config"], **change}
        out[name] = folder / f"{name}.pt"
        torch.save(blob, out[name])
    return out


def _one_line_refusal(result, path: Path) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"videobert: error: {path}: "), result.stderr
    assert "Traceback" not in result.stderr


def test_a_malformed_checkpoint_is_a_one_line_refusal(toy: Path, tmp_path: Path, tiny_args: list[str]) -> None:
    from media import write_video

    trained_path = tmp_path / "fusion.pt"
    train_library(toy, trained_path, TrainConfig(epochs=1, batch_size=4, device="cpu"))
    for kind, path in _malformed(trained_path, tmp_path / "trained").items():
        for command in (["evaluate", toy, "--fusion-checkpoint", path],
                        ["fuse", toy, "--fusion-checkpoint", path, "-o", tmp_path / f"out-{kind}"]):
            result = CliRunner().invoke(main, [str(a) for a in command])
            _one_line_refusal(result, path)
            assert ("unknown" if kind == "unknown-key" else "does not match") in result.stderr, result.stderr
    # Hand-edited provenance: feature models that are not records.
    blob = torch.load(trained_path, weights_only=True)
    blob["feature_models"] = ["resnet18", "bert"]
    torch.save(blob, tmp_path / "provenance.pt")
    for command in (["evaluate", toy, "--fusion-checkpoint", tmp_path / "provenance.pt"],
                    ["fuse", toy, "--fusion-checkpoint", tmp_path / "provenance.pt", "-o", tmp_path / "out-p"]):
        result = CliRunner().invoke(main, [str(a) for a in command])
        _one_line_refusal(result, tmp_path / "provenance.pt")
        assert "unreadable feature_models" in result.stderr
    # extract: a plain checkpoint for the tiny models' widths (resnet18 512, tiny BERT 32).
    plain = tmp_path / "plain.pt"
    save_fusion(CrossModalFusion(FusionConfig(512, 32, 32, 4)), plain)
    write_video(tmp_path / "v.mp4", fps=10, seconds=1.5)
    for kind, path in _malformed(plain, tmp_path / "plain").items():
        result = CliRunner().invoke(main, ["extract", str(tmp_path / "v.mp4"), "-o", str(tmp_path / f"x-{kind}"),
                                           *tiny_args, "--fusion-checkpoint", str(path)])
        _one_line_refusal(result, path)
        assert not list((tmp_path / f"x-{kind}").glob("shard-*.h5"))


def test_extract_records_the_checkpoints_width_not_the_command_lines(tmp_path: Path, tiny_args: list[str]) -> None:
    """tiny_args say fusion_dim=32, fusion_heads=4; the checkpoint is 16 wide with 2 heads: the shard
    config must say what made `clips/fused` (as `fuse` records it), since `train` reads it from there."""
    from media import write_video

    checkpoint = tmp_path / "narrow.pt"
    save_fusion(CrossModalFusion(FusionConfig(512, 32, 16, 2)), checkpoint)
    write_video(tmp_path / "v.mp4", fps=10, seconds=1.5)
    out = tmp_path / "out"
    command = ["extract", tmp_path / "v.mp4", "-o", out, "--save-frames", "--save-tokens", *tiny_args,
               "--fusion-checkpoint", checkpoint]
    result = run(command)
    assert result.exit_code == 0, result.stderr
    with h5py.File(next(out.glob("shard-*.h5"))) as f:
        config, dims = json.loads(f.attrs["config"]), json.loads(f.attrs["dims"])
        assert f["clips/fused"].shape[1] == 16
    assert (config["fusion_dim"], config["fusion_heads"], dims["fused"]) == (16, 2, 16)
    assert config["fusion_checkpoint"] == str(checkpoint)
    again = run(command)  # the same command adds to the folder (the recorded config is what it uses)
    assert again.exit_code == 0 and json.loads(again.stdout)["videos_skipped"] == 1, again.stderr
