"""The two encoders: a torchvision image backbone and a BERT text encoder.

Preprocessing runs on the CPU (`ImageEncoder.preprocess`, tokenization inside
`TextEncoder.encode_cues`), the forward passes on the device.
"""

from __future__ import annotations

import functools
import logging
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..device import cpu_capability, resolve_precision
from ..weights.resolve import ModelError, load_backbone, resolve_text_model

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_HEAD_ATTRS = ("fc", "classifier", "head", "heads")


def _strip_classifier(model: nn.Module) -> None:
    for attr in _HEAD_ATTRS:
        if isinstance(getattr(model, attr, None), nn.Module):
            setattr(model, attr, nn.Identity())
            return
    raise ModelError(f"{type(model).__name__}: no classifier head ({', '.join(_HEAD_ATTRS)}) to remove")


def fold_batch_norms(model: nn.Module) -> tuple[nn.Module, int]:
    """`model` (in eval mode) with each BatchNorm that only follows a convolution folded into that
    convolution's weights and bias, and how many were folded.

    The same function up to float rounding (features at cosine 1.000000 to the unfolded model), one
    pass over the activations less per layer: ResNet-50 on 2 CPU cores runs ~1.1x faster in bf16 and
    ~1.2x in fp32. Models torch.fx cannot trace are kept whole (0 folded), which costs speed only.
    (torch.fx.experimental.optimization.fuse does the same, but importing it compiles TorchScript
    modules on torch < 2.14: slower start-up and deprecation warnings.)"""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    convolutions = {nn.BatchNorm1d: nn.Conv1d, nn.BatchNorm2d: nn.Conv2d, nn.BatchNorm3d: nn.Conv3d}
    if not any(isinstance(m, norms) for m in model.modules()):
        return model, 0
    try:
        traced = torch.fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - FX raises many kinds on code it cannot trace
        log.info("%s: batch norms not folded (torch.fx cannot trace it: %s)", type(model).__name__,
                 str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return model, 0
    modules = dict(traced.named_modules())
    folded = 0
    for node in list(traced.graph.nodes):
        norm = modules.get(node.target) if node.op == "call_module" else None
        source = node.args[0] if norm is not None and node.args else None
        if not (isinstance(norm, norms) and norm.track_running_stats and isinstance(source, torch.fx.Node)
                and source.op == "call_module" and len(source.users) == 1  # the convolution's output goes nowhere else
                and type(modules.get(source.target)) is convolutions.get(type(norm))):
            continue
        parent, _, name = source.target.rpartition(".")
        setattr(traced.get_submodule(parent), name, fuse_conv_bn_eval(modules[source.target], norm))
        node.replace_all_uses_with(source)
        traced.graph.erase_node(node)
        folded += 1
    traced.recompile()
    return traced, folded


def resize_crop(frames: np.ndarray, resize_size: int, crop_size: int) -> torch.Tensor:
    """(n, H, W, 3) uint8 RGB -> (n, 3, crop, crop) uint8: short side resized (bilinear, antialiased), centre crop.

    Runs in the decode workers, so only uint8 crosses process boundaries. The same pixels as torchvision's
    `transforms.v2.functional` resize + center_crop (a test holds them byte-equal), written on torch
    alone: a worker that does not import torchvision (and the `torch._dynamo` it pulls in) starts ~1.2 s
    of CPU sooner, every worker, every run."""
    from torch.nn.functional import interpolate, pad

    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # NHWC -> NCHW (channels-last)
    height, width = x.shape[-2:]
    short, long = min(height, width), max(height, width)
    size = [resize_size, int(resize_size * long / short)]  # torchvision's rounding (down) of the long side
    size = size if height <= width else size[::-1]
    if len(x) and (height, width) != tuple(size):
        if _uint8_resize_is_native():
            x = interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        else:  # torchvision's path where torch has no uint8 kernel: float, rounded back
            x = interpolate(x.float(), size=size, mode="bilinear", align_corners=False,
                            antialias=True).round_().to(torch.uint8)
        height, width = size
    if crop_size > height or crop_size > width:  # a crop larger than the frame: zero borders, as torchvision
        left, top = max(crop_size - width, 0), max(crop_size - height, 0)
        x = pad(x, [left // 2, (left + 1) // 2, top // 2, (top + 1) // 2], value=0)
        height, width = x.shape[-2:]
    top, left = int(round((height - crop_size) / 2.0)), int(round((width - crop_size) / 2.0))
    return x[..., top : top + crop_size, left : left + crop_size].contiguous()


@functools.cache
def _uint8_resize_is_native() -> bool:
    """torch resizes uint8 images in its own vectorised kernel only at these CPU levels (torchvision asks
    the same question before choosing between uint8 and float). Asked once per process."""
    return cpu_capability().isa in ("AVX2", "AVX512") or platform.machine() in ("aarch64", "arm64")


class ImageEncoder:
    """A torchvision classification backbone with its classifier removed."""

    def __init__(self, model_name: str, weights: str, device: torch.device, image_size: int | None = None,
                 resize_size: int | None = None, models_root: Path | None = None, precision: str = "fp32",
                 compile_model: bool = False) -> None:
        from torchvision.models import get_model_weights

        model, self.record, tv_weights = load_backbone(model_name, weights, models_root)
        _strip_classifier(model)
        model, self.folded_batch_norms = fold_batch_norms(model.eval())
        # Preprocessing from the weights' metadata; random or file weights use the
        # architecture's default recipe.
        meta = tv_weights or get_model_weights(model_name).DEFAULT
        recipe = meta.transforms()
        self.resize_size = int(resize_size or _first(recipe.resize_size))
        self.crop_size = int(image_size or _first(recipe.crop_size))
        self.mean = torch.tensor(recipe.mean or IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(recipe.std or IMAGENET_STD).view(1, 3, 1, 1)
        self.device = device
        self.amp_dtype = resolve_precision(precision, device)
        self.model = model.eval().to(device, memory_format=torch.channels_last)
        with torch.inference_mode():
            probe = torch.zeros(1, 3, self.crop_size, self.crop_size, device=device)
            self.feature_dim = int(self.model(probe).shape[-1])
        if compile_model:
            self.model = torch.compile(self.model)

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """(n, H, W, 3) uint8 RGB -> (n, 3, crop, crop) float, normalised (CPU)."""
        return self.normalize(resize_crop(frames, self.resize_size, self.crop_size))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, 3, h, w) uint8 -> float, scaled to [0, 1] and normalised with the weights' mean/std."""
        mean, std = self.mean.to(pixels.device), self.std.to(pixels.device)
        return (pixels.float().div_(255.0) - mean) / std

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor, batch_size: int) -> torch.Tensor:
        """(n, 3, h, w) uint8 or normalised float -> (n, feature_dim) float32 on the CPU, `batch_size` at a time.

        uint8 input is moved as uint8 (4x less to copy) and normalised on the device; on CUDA the copy
        comes from pinned memory without blocking."""
        out = []
        for i in range(0, len(pixels), batch_size):
            chunk = pixels[i : i + batch_size]
            if self.device.type == "cuda":
                chunk = chunk.pin_memory().to(self.device, non_blocking=True)
            if chunk.dtype == torch.uint8:
                chunk = self.normalize(chunk)
            chunk = chunk.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                out.append(self.model(chunk).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.feature_dim)


def _first(value: int | list[int] | tuple[int, ...]) -> int:
    return value[0] if isinstance(value, (list, tuple)) else value


@dataclass
class WordTokens:
    """Contextual token features of one word (a word may be several word pieces)."""

    features: torch.Tensor  # (k, d)
    ids: torch.Tensor  # (k,) int64


class TextEncoder:
    """BERT over whole cues with neighbouring words as context; features per word."""

    def __init__(self, name: str, device: torch.device, max_length: int = 128, context_words: int = 16,
                 batch_size: int = 64, models_root: Path | None = None, precision: str = "fp32") -> None:
        import transformers
        from transformers import AutoModel, AutoTokenizer

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        folder, self.record = resolve_text_model(name, models_root)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
            self.model = AutoModel.from_pretrained(str(folder)).eval().to(device)
        except (OSError, ValueError) as exc:
            raise ModelError(f"{folder}: cannot load text model ({str(exc).splitlines()[0]})") from None
        if not self.tokenizer.is_fast:
            raise ModelError(f"{folder}: needs a fast tokenizer (tokenizer.json) to map words to tokens")
        self.device = device
        self.amp_dtype = resolve_precision(precision, device)
        self.max_length = max_length
        self.context_words = context_words
        self.batch_size = batch_size
        self.feature_dim = int(self.model.config.hidden_size)
        self.skipped_words = 0

    def _pieces(self, cues: list[list[str]]) -> list[list[int]]:
        """Word pieces per word of each cue (each cue tokenized once, as the encoder will see it)."""
        counts = [[0] * len(words) for words in cues]
        nonempty = [ci for ci, words in enumerate(cues) if words]
        if nonempty:
            enc = self.tokenizer([cues[ci] for ci in nonempty], is_split_into_words=True, add_special_tokens=False)
            for row, ci in enumerate(nonempty):
                for wid in enc.word_ids(row):
                    if wid is not None:
                        counts[ci][wid] += 1
        return counts

    def _units(self, cues: list[list[str]]) -> list[tuple[int, int, list[str], int, int]]:
        """(cue, first word, words with context, offset of own words, own count) per encoder input.

        Passes are cut by token count, never inside a word: a pass's own words, its context words and the
        special tokens fit `max_length` (words of many pieces make shorter passes). A word that alone has
        more pieces than fit is left out (no partial tokens); the caller counts it as skipped."""
        budget = max(1, self.max_length - self.tokenizer.num_special_tokens_to_add(pair=False))
        pieces = self._pieces(cues)
        units = []
        for ci, words in enumerate(cues):
            first = 0
            while first < len(words):
                if pieces[ci][first] > budget:
                    first += 1  # longer than a whole pass: cannot be encoded without cutting it
                    continue
                used, stop = 0, first
                while stop < len(words) and used + pieces[ci][stop] <= budget:
                    used += pieces[ci][stop]
                    stop += 1
                own = words[first:stop]
                before: list[str] = []
                after: list[str] = []
                if len(own) < self.context_words:
                    # Short pass: borrow neighbouring words so BERT sees a sentence, not 3 words;
                    # alternately one word before and one after, while they fit.
                    if first:
                        prev_words, prev_pieces = words[:first], pieces[ci][:first]
                    elif ci > 0:
                        prev_words, prev_pieces = cues[ci - 1], pieces[ci - 1]
                    else:
                        prev_words, prev_pieces = [], []
                    if stop < len(words):
                        next_words, next_pieces = words[stop:], pieces[ci][stop:]
                    elif ci + 1 < len(cues):
                        next_words, next_pieces = cues[ci + 1], pieces[ci + 1]
                    else:
                        next_words, next_pieces = [], []
                    b = a = 0  # words borrowed before / after
                    grew = True
                    while grew:
                        grew = False
                        if b < min(self.context_words, len(prev_words)) and used + prev_pieces[-1 - b] <= budget:
                            used += prev_pieces[-1 - b]
                            b += 1
                            grew = True
                        if a < min(self.context_words, len(next_words)) and used + next_pieces[a] <= budget:
                            used += next_pieces[a]
                            a += 1
                            grew = True
                    before = prev_words[len(prev_words) - b :] if b else []
                    after = next_words[:a]
                units.append((ci, first, before + own + after, len(before), len(own)))
                first = stop
        return units

    def encode_cues(self, cues: list[list[str]]) -> dict[tuple[int, int], WordTokens]:
        """Token features for every word, keyed by (cue index, word position)."""
        return self.encode_transcripts([cues])[0]

    @torch.inference_mode()
    def encode_transcripts(self, transcripts: list[list[list[str]]]) -> list[dict[tuple[int, int], WordTokens]]:
        """encode_cues for several videos' cues at once: full batches across videos (each input keeps the
        context of its own video's neighbouring cues)."""
        results: list[dict[tuple[int, int], WordTokens]] = [{} for _ in transcripts]
        units = [(video, *unit) for video, cues in enumerate(transcripts) for unit in self._units(cues)]
        encoded = sum(u[5] for u in units)
        self.skipped_words += sum(len(w) for cues in transcripts for w in cues) - encoded  # longer than a pass
        for start in range(0, len(units), self.batch_size):
            batch = units[start : start + self.batch_size]
            enc = self.tokenizer([u[3] for u in batch], is_split_into_words=True, padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                hidden = self.model(**{k: v.to(self.device) for k, v in enc.items()}).last_hidden_state
            hidden = hidden.float().cpu()
            for row, (video, ci, first, _, offset, count) in enumerate(batch):
                word_ids = enc.word_ids(row)
                positions: dict[int, list[int]] = {}
                for tok, wid in enumerate(word_ids):
                    if wid is not None and offset <= wid < offset + count:
                        positions.setdefault(wid - offset, []).append(tok)
                for j in range(count):
                    toks = positions.get(j)
                    if not toks:
                        self.skipped_words += 1  # a word the tokenizer drops entirely (no piece)
                        continue
                    results[video][(ci, first + j)] = WordTokens(hidden[row, toks].clone(),
                                                                 enc["input_ids"][row, toks].clone())
        return results
