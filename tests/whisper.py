"""A tiny random Whisper (built from a WhisperConfig, no download) for the speech-recognition plumbing.

Its tokenizer is byte-level BPE over the 256 byte symbols (no merges) plus Whisper's control tokens, in
the order Whisper has them (English-only layout): the tokenizer finds the first timestamp token as the
last special token + 1, so the control tokens must be registered in id order.
"""

from __future__ import annotations

from pathlib import Path

CONTROL = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>", "<|startoflm|>",
           "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
TIMESTAMPS = 1501  # <|0.00|> ... <|30.00|>


def byte_vocab() -> dict[str, int]:
    """GPT-2's byte -> printable character table, as the vocab of a byte-level BPE with no merges."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return {c: i for i, c in enumerate(chars)}


def make_tiny_whisper(folder: Path, seed: int = 0, max_length: int = 24) -> Path:
    import torch
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizer)

    vocab = byte_vocab()
    ids = {token: 256 + i for i, token in enumerate(CONTROL)}
    eot, sot, no_ts = ids["<|endoftext|>"], ids["<|startoftranscript|>"], ids["<|notimestamps|>"]
    config = WhisperConfig(vocab_size=256 + len(CONTROL) + TIMESTAMPS, num_mel_bins=80, d_model=32,
                           encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64, decoder_layers=1,
                           decoder_attention_heads=2, decoder_ffn_dim=64, max_source_positions=1500,
                           max_target_positions=64, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
                           decoder_start_token_id=sot, suppress_tokens=None, begin_suppress_tokens=None)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, max_length=max_length,
        no_timestamps_token_id=no_ts, prev_sot_token_id=ids["<|startofprev|>"], max_initial_timestamp_index=50,
        is_multilingual=False, return_timestamps=False, alignment_heads=[[0, 0], [0, 1]],
        begin_suppress_tokens=[220, eot], suppress_tokens=[])
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[], add_prefix_space=False, unk_token="<|endoftext|>",
                                 bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                 extra_special_tokens=CONTROL[1:])
    for token, i in ids.items():
        assert tokenizer.convert_tokens_to_ids(token) == i, token
    assert tokenizer.all_special_ids[-1] == no_ts
    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return folder
