"""Bidirectional cross-modal attention: one fused vector per clip.

For a clip with frame features V (F x d_img) and token features T (L x d_txt):

    Hv = V Wv + bv                      (F x d)
    Ht = T Wt + bt   (identity when d_txt == d)
    Hv' = LayerNorm(Hv + MHA(Q=Hv, K=Ht, V=Ht, mask = padded tokens))   video attends to text
    Ht' = LayerNorm(Ht + MHA(Q=Ht, K=Hv, V=Hv, mask = padded frames))   text attends to video
    pv = mean over frames of Hv'
    pt = mean over real tokens of Ht'
    fused = (pv + pt) / 2

A clip with no text has no keys for the video queries: the attention term is
taken as 0, so Hv' = LayerNorm(Hv), and fused = pv (never NaN; `has_text` is
False in the output). Without a checkpoint the weights come from
`torch.manual_seed(seed)`, so the same seed gives the same module everywhere.

A checkpoint is a dict {"state_dict", "config", ...}; one written by `videobert train`
(training.py) also records the feature models it was trained on, and `build_fusion` refuses it for
features of other models when given theirs (`feature_models`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from .weights.resolve import RANDOM, ModelError, ModelRecord, sha256_file


@dataclass(frozen=True)
class FusionConfig:
    video_dim: int
    text_dim: int
    dim: int = 768
    heads: int = 8


class CrossModalFusion(nn.Module):
    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.video_proj = nn.Linear(config.video_dim, d)
        self.text_proj = nn.Linear(config.text_dim, d) if config.text_dim != d else nn.Identity()
        self.video_to_text = nn.MultiheadAttention(d, config.heads, batch_first=True)
        self.text_to_video = nn.MultiheadAttention(d, config.heads, batch_first=True)
        self.video_norm = nn.LayerNorm(d)
        self.text_norm = nn.LayerNorm(d)

    def forward(self, frames: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor,
                frame_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (B, F, d_img); tokens (B, L, d_txt); token_mask (B, L) True = real token;
        frame_mask (B, F) True = real frame (default all). Returns (fused (B, d), has_text (B,))."""
        if tokens.shape[1] == 0:  # no clip in the batch has text: one all-padding slot keeps shapes valid
            tokens = tokens.new_zeros(tokens.shape[0], 1, tokens.shape[2])
            token_mask = token_mask.new_zeros(tokens.shape[0], 1)
        hv, ht = self.project(frames, tokens)
        return self.attend(hv, ht, token_mask, frame_mask)

    def project(self, frames: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-modality projections Hv (B, F, d) and Ht (B, L, d). Split from `attend` so that
        scoring many (clip, text) pairs projects each clip and each text once."""
        return self.video_proj(frames), self.text_proj(tokens)

    def attend(self, hv: torch.Tensor, ht: torch.Tensor, token_mask: torch.Tensor,
               frame_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Both attention directions and the pooling on projected inputs; `forward` = attend(project)."""
        batch, n_frames = hv.shape[:2]
        if frame_mask is None:
            frame_mask = torch.ones(batch, n_frames, dtype=torch.bool, device=hv.device)
        if ht.shape[1] == 0:
            ht = ht.new_zeros(batch, 1, ht.shape[2])
            token_mask = token_mask.new_zeros(batch, 1)
        has_text = token_mask.any(dim=1)
        # A row whose keys are all masked gives NaN in attention; unmask one slot there and zero its result.
        safe_mask = token_mask.clone()
        safe_mask[~has_text, 0] = True

        # Both directions attend to the projected inputs, not to each other's outputs.
        v_att, _ = self.video_to_text(hv, ht, ht, key_padding_mask=~safe_mask, need_weights=False)
        t_att, _ = self.text_to_video(ht, hv, hv, key_padding_mask=~frame_mask, need_weights=False)
        hv = self.video_norm(hv + v_att * has_text[:, None, None])
        ht = self.text_norm(ht + t_att)

        fm = frame_mask.unsqueeze(-1).to(hv.dtype)
        pv = (hv * fm).sum(1) / fm.sum(1).clamp(min=1)
        tm = token_mask.unsqueeze(-1).to(ht.dtype)
        pt = (ht * tm).sum(1) / tm.sum(1).clamp(min=1)
        fused = torch.where(has_text[:, None], (pv + pt) / 2, pv)
        return fused, has_text


CHECKPOINT_FORMAT = "videobert-fusion"
FEATURE_ROLES = ("video", "text")


def pad_tokens(sequences: list[Any], width: int, min_length: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token feature sequences ((k_i, width) tensors or arrays; None = no tokens) -> the fusion's text input:
    (n, longest, width) float zero-padded and the (n, longest) bool mask of real tokens.

    The one place padding is done, so extract, fuse, train and evaluate feed the fusion alike.
    `min_length` keeps at least that many columns (attention over zero keys has no softmax)."""
    lengths = [0 if s is None else len(s) for s in sequences]
    longest = max([min_length, *lengths])
    padded = torch.zeros(len(sequences), longest, width)
    mask = torch.zeros(len(sequences), longest, dtype=torch.bool)
    for row, (seq, k) in enumerate(zip(sequences, lengths)):
        if k:
            padded[row, :k] = torch.as_tensor(seq, dtype=torch.float32)
            mask[row, :k] = True
    return padded, mask


def feature_model_ids(models: Iterable[ModelRecord | Mapping[str, Any]]) -> list[dict[str, str]]:
    """role, name and weights sha256 of the video and text models (what a fusion is trained on)."""
    out = []
    for model in models:
        m = model.to_dict() if isinstance(model, ModelRecord) else dict(model)
        if m.get("role") in FEATURE_ROLES:
            out.append({"role": str(m["role"]), "name": str(m["name"]), "sha256": str(m["sha256"])})
    return sorted(out, key=lambda m: FEATURE_ROLES.index(m["role"]))


def _describe(models: list[dict[str, str]]) -> str:
    return " and ".join(f"{m['role']} model {m['name']} (sha256 {m['sha256'][:12]})" for m in models)


def check_feature_models(trained_on: list[dict[str, str]], actual: Iterable[ModelRecord | Mapping[str, Any]],
                         source: str, random_verified: bool = False) -> None:
    """Refuse a fusion trained on features from other models, compared by weights sha256.

    Random (untrained) weights have no sha256 and differ in every extract run, so a fusion trained
    on them fits only the features of that very run: refused unless the caller has checked that
    (`random_verified`, see training.check_checkpoint_features)."""
    have = {m["role"]: m for m in feature_model_ids(actual)}
    for want in trained_on:
        got = have.get(want["role"])
        if got is None or got["sha256"] != want["sha256"] or (want["sha256"] == RANDOM and got["name"] != want["name"]):
            raise ModelError(
                f"{source} was trained on features of {_describe(trained_on)}; these features come from "
                f"{_describe(list(have.values())) or 'unrecorded models'}: refusing to mix them "
                "(train a fusion on these features, or extract with the models it was trained on)")
        if want["sha256"] == RANDOM and not random_verified:
            raise ModelError(
                f"{source} was trained on features of RANDOM (untrained) {want['role']} weights, which differ "
                "in every extract run, and these are not the features it was trained on: refusing "
                "(to train on untrained weights that can be reproduced, save them once and pass the file "
                "as --video-weights PATH)")


def read_checkpoint(checkpoint: str | Path) -> dict[str, Any]:
    """A fusion checkpoint's contents: at least {"state_dict", "config"}; one written by `videobert
    train` also has the alignment head, the feature models, training metrics and the data fingerprint."""
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise ModelError(f"fusion checkpoint not found: {path}")
    try:
        blob = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle and zip errors come in many types
        raise ModelError(f"{path}: cannot read as a fusion checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(blob, dict) or "state_dict" not in blob or "config" not in blob:
        raise ModelError(f"{path}: not a fusion checkpoint (expected keys state_dict and config)")
    return blob


def checkpoint_config(blob: dict[str, Any], path: str | Path) -> FusionConfig:
    """The FusionConfig a checkpoint records; a config that is not one (unknown or missing keys, values
    of the wrong type) is a ModelError naming the file, not a TypeError from deep inside."""
    config = blob["config"]
    if not isinstance(config, dict):
        raise ModelError(f"{path}: malformed fusion checkpoint: its config is a {type(config).__name__}, not a mapping")
    known = {f.name for f in fields(FusionConfig)}
    unknown, missing = sorted(set(config) - known), sorted(k for k in ("video_dim", "text_dim") if k not in config)
    if unknown or missing:
        what = "; ".join(filter(None, [f"unknown config key(s) {', '.join(map(repr, unknown))}" if unknown else "",
                                       f"missing config key(s) {', '.join(map(repr, missing))}" if missing else ""]))
        raise ModelError(f"{path}: malformed fusion checkpoint: {what} (known: {', '.join(sorted(known))})")
    bad = [k for k, v in config.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1]
    if bad:
        raise ModelError(f"{path}: malformed fusion checkpoint: config {', '.join(f'{k}={config[k]!r}' for k in bad)}"
                         " (expected positive integers)")
    saved = FusionConfig(**config)
    if saved.dim % saved.heads:
        raise ModelError(f"{path}: malformed fusion checkpoint: dim {saved.dim} is not divisible by "
                         f"{saved.heads} heads")
    return saved


def load_weights(module: nn.Module, state_dict: Any, path: str | Path, what: str = "state_dict") -> None:
    """module.load_state_dict, with a state dict that does not fit the module (its recorded config)
    refused as a one-line ModelError naming the file."""
    if not isinstance(state_dict, Mapping):
        raise ModelError(f"{path}: malformed fusion checkpoint: its {what} is a {type(state_dict).__name__}")
    try:
        module.load_state_dict(state_dict)
    except (RuntimeError, TypeError, ValueError) as exc:
        detail = " ".join(str(exc).split())
        if len(detail) > 300:
            detail = detail[:297] + "..."
        raise ModelError(f"{path}: malformed fusion checkpoint: its {what} does not match its config "
                         f"({detail})") from None


def build_fusion(config: FusionConfig, seed: int, checkpoint: str | None,
                 feature_models: Iterable[ModelRecord | Mapping[str, Any]] | None = None,
                 random_verified: bool = False) -> tuple[CrossModalFusion, ModelRecord]:
    """A fusion module from a fixed seed, or from a checkpoint {"state_dict", "config", ...}.

    With `feature_models` (the records of the models that make the features), a checkpoint that
    records other feature models (`videobert train` records them) is refused; see
    `check_feature_models` for random weights."""
    if checkpoint is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = CrossModalFusion(config)
        return module.eval(), ModelRecord("fusion", "cross-modal-attention", f"seed:{seed}", "seed", f"seed:{seed}")
    path = Path(checkpoint).expanduser()
    blob = read_checkpoint(path)
    saved = checkpoint_config(blob, path)
    if (saved.video_dim, saved.text_dim) != (config.video_dim, config.text_dim):
        raise ModelError(
            f"{path}: trained on features of width video={saved.video_dim}, text={saved.text_dim}; "
            f"these models give video={config.video_dim}, text={config.text_dim}"
        )
    if feature_models is not None and blob.get("feature_models"):
        check_feature_models(blob["feature_models"], feature_models, str(path), random_verified)
    module = CrossModalFusion(saved)
    load_weights(module, blob["state_dict"], path)
    return module.eval(), ModelRecord("fusion", "cross-modal-attention", str(path), str(path.resolve()),
                                      sha256_file(path), path.stat().st_size)


def save_fusion(module: CrossModalFusion, path: Path, **extra: object) -> None:
    """{"state_dict", "config", **extra}; written under a temporary name and renamed into place."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"state_dict": module.state_dict(), "config": asdict(module.config), **extra}, str(tmp))
    os.replace(tmp, path)
