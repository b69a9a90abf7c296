"""Cross-modal fusion: shapes, masking, the no-text case, determinism, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from videobert_cli.fusion import CrossModalFusion, FusionConfig, build_fusion, save_fusion
from videobert_cli.weights.resolve import ModelError

CFG = FusionConfig(video_dim=48, text_dim=24, dim=32, heads=4)


def _inputs(batch: int = 3, frames: int = 4, tokens: int = 5):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(batch, frames, CFG.video_dim, generator=g),
            torch.randn(batch, tokens, CFG.text_dim, generator=g))


def test_one_vector_per_clip_of_the_fusion_width() -> None:
    module, _ = build_fusion(CFG, seed=0, checkpoint=None)
    frames, tokens = _inputs()
    fused, has_text = module(frames, tokens, torch.ones(3, 5, dtype=torch.bool))
    assert fused.shape == (3, 32)
    assert has_text.tolist() == [True, True, True]


def test_resnet50_width_is_projected_not_fed_raw() -> None:
    module, _ = build_fusion(FusionConfig(video_dim=2048, text_dim=768, dim=768, heads=8), 0, None)
    assert isinstance(module.text_proj, torch.nn.Identity)  # BERT width already equals d
    fused, _ = module(torch.randn(2, 4, 2048), torch.randn(2, 6, 768), torch.ones(2, 6, dtype=torch.bool))
    assert fused.shape == (2, 768)


def test_padding_tokens_cannot_change_the_output() -> None:
    module, _ = build_fusion(CFG, seed=0, checkpoint=None)
    frames, tokens = _inputs(batch=1, tokens=3)
    mask = torch.ones(1, 3, dtype=torch.bool)
    with torch.no_grad():
        reference, _ = module(frames, tokens, mask)
        padded = torch.cat([tokens, 1000 * torch.randn(1, 7, CFG.text_dim)], dim=1)
        padded_mask = torch.cat([mask, torch.zeros(1, 7, dtype=torch.bool)], dim=1)
        result, _ = module(frames, padded, padded_mask)
    torch.testing.assert_close(result, reference, rtol=1e-5, atol=1e-5)


def test_batching_does_not_change_a_clip_result() -> None:
    module, _ = build_fusion(CFG, seed=0, checkpoint=None)
    frames, tokens = _inputs(batch=3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        together, _ = module(frames, tokens, mask)
        for i in range(3):
            n = int(mask[i].sum())
            alone, _ = module(frames[i : i + 1], tokens[i : i + 1, :n], mask[i : i + 1, :n])
            torch.testing.assert_close(alone[0], together[i], rtol=1e-5, atol=1e-5)


def test_a_clip_without_text_is_finite_and_flagged() -> None:
    module, _ = build_fusion(CFG, seed=0, checkpoint=None)
    frames, tokens = _inputs(batch=2)
    mask = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        fused, has_text = module(frames, tokens, mask)
        assert torch.isfinite(fused).all()
        assert has_text.tolist() == [True, False]
        # Defined result: the pooled, normalised video stream alone.
        expected = module.video_norm(module.video_proj(frames[1])).mean(0)
        torch.testing.assert_close(fused[1], expected, rtol=1e-5, atol=1e-5)
        # A batch in which no clip has any token slot at all.
        fused, has_text = module(frames, tokens[:, :0], mask[:, :0])
        assert torch.isfinite(fused).all() and not has_text.any()


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    a, rec_a = build_fusion(CFG, seed=7, checkpoint=None)
    b, _ = build_fusion(CFG, seed=7, checkpoint=None)
    c, _ = build_fusion(CFG, seed=8, checkpoint=None)
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.state_dict().values(), c.state_dict().values()))
    assert rec_a.sha256 == "seed:7"
    # Building the module must not disturb the global RNG.
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    build_fusion(CFG, seed=7, checkpoint=None)
    assert torch.equal(torch.rand(1), expected)


def test_checkpoint_round_trip_and_provenance(tmp_path: Path) -> None:
    trained = CrossModalFusion(CFG)
    path = tmp_path / "fusion.pt"
    save_fusion(trained, path)
    loaded, record = build_fusion(CFG, seed=0, checkpoint=str(path))
    for pa, pb in zip(trained.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(pa, pb)
    assert len(record.sha256) == 64 and record.source == str(path.resolve())


def test_checkpoint_for_other_feature_widths_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fusion.pt"
    save_fusion(CrossModalFusion(FusionConfig(video_dim=2048, text_dim=768, dim=32, heads=4)), path)
    with pytest.raises(ModelError, match="trained on features of width"):
        build_fusion(CFG, seed=0, checkpoint=str(path))
    with pytest.raises(ModelError, match="not found"):
        build_fusion(CFG, seed=0, checkpoint=str(tmp_path / "missing.pt"))
