"""Shared fixtures: tiny models built on the fly (no downloads), offline mode."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# Never reach for a hub from the tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VIDEOBERT_OFFLINE", "1")

VOCAB = (
    "[PAD] [UNK] [CLS] [SEP] [MASK] a the and is of to in red blue green yellow square circle triangle "
    "moves left right up down hello there friend second cue line two big small ##s ##ing ##ed cafe"
).split()


def make_tiny_bert(folder: Path, hidden: int = 32, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab=str(folder / "vocab.txt")).save_pretrained(str(folder))
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=256)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import transformers

    transformers.utils.logging.disable_progress_bar()
    return make_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_args(tiny_bert: Path) -> list[str]:
    """CLI options that make `extract` use tiny models on small frames."""
    return [
        "--video-model", "resnet18", "--video-weights", "random", "--text-model", str(tiny_bert),
        "--device", "cpu", "--set", "image_size=64", "--set", "resize_size=72",
        "--set", "fusion_dim=32", "--set", "fusion_heads=4", "--quiet",
    ]
