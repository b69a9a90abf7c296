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
    from transformers import BertConfig, BertModel

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    bert_tokenizer(VOCAB).save_pretrained(str(folder))
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=256)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(str(folder))
    return folder


def bert_tokenizer(vocab: list[str]):
    """A BERT WordPiece tokenizer (lower-casing, CLS/SEP) over `vocab`, built with `tokenizers` itself.

    Built this way, not with `BertTokenizerFast(vocab_file=...)`, because transformers 5 silently
    ignores `vocab_file` (every word becomes [UNK]) and 4.x has no `vocab=`; tokenizer.json loads in both.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    ids = {token: i for i, token in enumerate(vocab)}
    tokenizer = Tokenizer(models.WordPiece(ids, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


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
