"""Encoders: image preprocessing and features, contextual text tokens per word."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from videobert_cli.extract.encoders import ImageEncoder, TextEncoder, fold_batch_norms
from videobert_cli.weights.resolve import ModelError


@pytest.fixture(scope="module")
def image_encoder() -> ImageEncoder:
    return ImageEncoder("resnet18", "random", torch.device("cpu"), image_size=64, resize_size=72)


@pytest.fixture(scope="module")
def text_encoder(tiny_bert: Path) -> TextEncoder:
    return TextEncoder(str(tiny_bert), torch.device("cpu"), max_length=32, context_words=4, batch_size=3)


def test_preprocess_is_rgb_nchw_resized_cropped_and_normalised(image_encoder: ImageEncoder) -> None:
    frames = np.zeros((2, 90, 160, 3), dtype=np.uint8)
    frames[..., 0] = 255  # pure red
    x = image_encoder.preprocess(frames)
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = [(1 - mean[0]) / std[0], (0 - mean[1]) / std[1], (0 - mean[2]) / std[2]]
    np.testing.assert_allclose(x[0, :, 32, 32].numpy(), expected, rtol=1e-4)


@pytest.mark.parametrize("shape, resize, crop", [((3, 90, 160), 72, 64), ((2, 360, 640), 256, 224),
                                                 ((1, 577, 768), 256, 224), ((1, 640, 360), 256, 224),
                                                 ((2, 300, 299), 256, 224), ((1, 224, 224), 224, 224),
                                                 ((1, 50, 80), 40, 64), ((0, 90, 160), 72, 64)],
                         ids=["small", "landscape", "batch-of-one", "portrait", "odd", "unchanged",
                              "crop-larger-than-frame", "empty"])
@pytest.mark.parametrize("native", [True, False], ids=["uint8-kernel", "float-path"])
def test_resize_crop_gives_torchvisions_pixels_exactly(monkeypatch, shape, resize, crop, native) -> None:
    import torchvision.transforms.v2.functional._geometry as geometry
    from torchvision.transforms.v2 import functional as F

    from videobert_cli.extract import encoders

    # Both sides on the same kernel: torch's uint8 one (AVX2 and up), or float and rounded back.
    monkeypatch.setattr(encoders, "_uint8_resize_is_native", lambda: native)
    monkeypatch.setattr(geometry, "_do_native_uint8_resize_on_cpu", lambda interpolation: native)
    frames = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2)
    expected = F.center_crop(F.resize(x, [resize], antialias=True), [crop, crop])
    got = encoders.resize_crop(frames, resize, crop)
    assert got.dtype == torch.uint8 and got.shape == expected.shape and torch.equal(got, expected)


def test_centre_crop_keeps_the_middle(image_encoder: ImageEncoder) -> None:
    frames = np.zeros((1, 72, 288, 3), dtype=np.uint8)
    frames[:, :, 112:176] = 255  # a white band in the middle third, 64 px wide after resize (72 short side)
    x = image_encoder.preprocess(frames)
    assert x[0, 0].min() > 2.0  # all white: the crop is the centre of the wide frame


def test_backbone_features_without_the_classifier(image_encoder: ImageEncoder) -> None:
    assert image_encoder.feature_dim == 512
    pixels = image_encoder.preprocess(np.random.default_rng(0).integers(0, 255, (5, 72, 96, 3), dtype=np.uint8))
    out = image_encoder.encode(pixels, batch_size=2)
    assert out.shape == (5, 512) and torch.isfinite(out).all()
    torch.testing.assert_close(image_encoder.encode(pixels, batch_size=5), out, rtol=1e-4, atol=1e-4)


def test_batch_norms_are_folded_into_their_convolutions_without_changing_the_features() -> None:
    from torchvision.models import resnet18

    torch.manual_seed(4)
    model = resnet18().eval()
    for module in model.modules():  # trained-looking statistics: a fold of identity norms proves nothing
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.3, 3.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    x = torch.randn(4, 3, 64, 64)
    with torch.inference_mode():
        expected = model(x)
    folded, count = fold_batch_norms(copy.deepcopy(model))
    assert count == 20  # every one in resnet18 (each follows a convolution)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in _called_modules(folded))
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), expected, rtol=1e-4, atol=1e-4)


def test_a_model_fx_cannot_trace_keeps_its_batch_norms() -> None:
    class Branchy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.norm = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow: symbolic tracing fails
                x = -x
            return self.norm(self.conv(x))

    model = Branchy().eval()
    kept, count = fold_batch_norms(model)
    assert kept is model and count == 0
    plain = torch.nn.Linear(2, 2)
    assert fold_batch_norms(plain) == (plain, 0)  # nothing to fold: not traced at all

    class OwnNorm(torch.nn.BatchNorm2d):  # a subclass may compute something else: left as it is
        pass

    assert fold_batch_norms(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), OwnNorm(4)).eval())[1] == 0


def _called_modules(graph_module: torch.nn.Module) -> list[torch.nn.Module]:
    modules = dict(graph_module.named_modules())
    return [modules[n.target] for n in graph_module.graph.nodes if n.op == "call_module"]


def test_the_extract_encoder_runs_folded(image_encoder: ImageEncoder) -> None:
    assert image_encoder.folded_batch_norms == 20


def test_weights_from_a_state_dict_file(tmp_path: Path) -> None:
    from torchvision.models import resnet18

    torch.manual_seed(3)
    model = resnet18()
    model.bn1.running_mean.fill_(0.5)  # buffers come from the file too
    good = tmp_path / "mine.pth"
    torch.save(model.state_dict(), good)
    encoder = ImageEncoder("resnet18", str(good), torch.device("cpu"), image_size=64, resize_size=72)
    assert encoder.record.source == str(good.resolve()) and len(encoder.record.sha256) == 64
    assert not any(t.is_meta for t in (*encoder.model.parameters(), *encoder.model.buffers()))
    model.fc = torch.nn.Identity()
    pixels = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():  # the file's model, its batch norms folded into its convolutions
        torch.testing.assert_close(encoder.encode(pixels, 3), model.eval()(encoder.normalize(pixels)),
                                   rtol=1e-4, atol=1e-4)
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ModelError, match="wrong.pth: does not fit resnet18"):
        ImageEncoder("resnet18", str(wrong), torch.device("cpu"))
    with pytest.raises(ModelError, match="not found"):
        ImageEncoder("resnet18", str(tmp_path / "missing.pth"), torch.device("cpu"))
    with pytest.raises(ModelError, match="unknown torchvision model"):
        ImageEncoder("resnet_9000", "random", torch.device("cpu"))


def test_short_cues_borrow_context_and_long_ones_are_chunked(text_encoder: TextEncoder) -> None:
    cues = [["the", "big", "red", "square", "moves", "left"], ["hello"], ["a", "blue", "circle"]]
    units = text_encoder._units(cues)
    # (cue, first word, words with context, offset of own words, own count)
    assert units[0] == (0, 0, cues[0], 0, 6)  # 6 words >= context_words (4): no context
    assert units[1] == (1, 0, ["red", "square", "moves", "left", "hello", "a", "blue", "circle"], 4, 1)
    assert units[2] == (2, 0, ["hello", "a", "blue", "circle"], 1, 3)
    long_cue = [["red"] * 40]
    chunks = text_encoder._units(long_cue)
    assert [u[1] for u in chunks] == [0, 30]  # max_length 32 = [CLS] + 30 one-piece words + [SEP] per pass
    assert sum(u[4] for u in chunks) == 40


def test_long_cues_of_many_piece_words_lose_no_word(text_encoder: TextEncoder) -> None:
    """Passes are cut by token count, never inside a word: 65 words of 5 pieces each all keep their tokens."""
    word = "squaressss"  # square ##s ##s ##s ##s
    vocab = text_encoder.tokenizer.convert_tokens_to_ids
    pieces = [vocab("square")] + [vocab("##s")] * 4
    cues = [["hello"], [word] * 65, ["left"]]
    before = text_encoder.skipped_words
    tokens = text_encoder.encode_cues(cues)
    assert text_encoder.skipped_words == before
    assert set(tokens) == {(0, 0), (2, 0)} | {(1, j) for j in range(65)}
    for j in range(65):
        assert tokens[(1, j)].ids.tolist() == pieces, j
    for _, _, words, offset, count in text_encoder._units(cues):
        n = len(text_encoder.tokenizer(words, is_split_into_words=True)["input_ids"])
        assert n <= text_encoder.max_length  # own words + context + [CLS]/[SEP] fit: nothing truncated


def test_a_word_longer_than_max_length_is_the_only_loss_and_is_counted(text_encoder: TextEncoder) -> None:
    huge = "red" + "s" * 40  # red ##s x 40: 41 pieces > max_length 32
    cues = [["the", "big", huge, "square"], ["moves"]]
    before = text_encoder.skipped_words
    tokens = text_encoder.encode_cues(cues)
    assert text_encoder.skipped_words == before + 1
    assert set(tokens) == {(0, 0), (0, 1), (0, 3), (1, 0)}  # no partial tokens for the huge word


def test_every_word_gets_its_own_contextual_tokens(text_encoder: TextEncoder) -> None:
    cues = [["the", "red", "squares"], ["moves"], ["left", "and", "right"]]
    tokens = text_encoder.encode_cues(cues)
    assert set(tokens) == {(0, 0), (0, 1), (0, 2), (1, 0), (2, 0), (2, 1), (2, 2)}
    vocab = text_encoder.tokenizer.convert_tokens_to_ids
    assert tokens[(0, 2)].ids.tolist() == [vocab("square"), vocab("##s")]  # word pieces stay with their word
    assert tokens[(0, 2)].features.shape == (2, 32)
    # Context matters: "moves" alone is encoded differently from "moves" inside its sentence.
    alone = text_encoder.encode_cues([["moves"]])[(0, 0)].features
    assert not torch.allclose(alone, tokens[(1, 0)].features)
    # Batching (and the padding it brings) does not change results.
    batch_size = text_encoder.batch_size
    text_encoder.batch_size = 1
    try:
        one_by_one = text_encoder.encode_cues(cues)
    finally:
        text_encoder.batch_size = batch_size
    for key, value in tokens.items():
        torch.testing.assert_close(one_by_one[key].features, value.features, rtol=1e-4, atol=1e-5)


def test_videos_encoded_together_keep_their_own_context(text_encoder: TextEncoder) -> None:
    first = [["the", "red", "squares"], ["moves"]]
    second = [["hello"], ["a", "blue", "circle"]]
    together = text_encoder.encode_transcripts([first, [], second])
    assert together[1] == {}
    for cues, joint in ((first, together[0]), (second, together[2])):
        alone = text_encoder.encode_cues(cues)  # no words borrowed from the other video
        assert set(joint) == set(alone)
        for key, value in alone.items():
            torch.testing.assert_close(joint[key].features, value.features, rtol=1e-4, atol=1e-5)
            assert joint[key].ids.tolist() == value.ids.tolist()


def test_text_model_folder_problems_are_named(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="text model folder not found"):
        TextEncoder(str(tmp_path / "nope"), torch.device("cpu"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="has no config.json"):
        TextEncoder(str(tmp_path / "empty"), torch.device("cpu"))


def test_tiny_tokenizer_knows_every_test_word(tiny_bert: Path) -> None:
    """Fixture guard: the test vocabulary must reach the tokenizer (transformers 5 ignores `vocab_file=`);
    if it fell back to an empty vocab every word would be [UNK] and the text tests would prove nothing."""
    from conftest import VOCAB
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert))
    words = [w for w in VOCAB if not (w.startswith("[") or w.startswith("##"))]
    ids = [tokenizer.convert_tokens_to_ids(w) for w in words]
    assert tokenizer.unk_token_id not in ids
    assert len(set(ids)) == len(words)
    assert [tokenizer.convert_ids_to_tokens(i) for i in ids] == words
    encoded = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
    assert encoded == ids  # each test word is one token of its own, not [UNK]


def test_bf16_features_agree_with_fp32_per_frame_and_per_token(tiny_bert: Path) -> None:
    """What `precision: auto` picks on a CPU with native bf16: both encoders under bf16 autocast give
    the fp32 features to cosine > 0.999 (ResNet-50 and bert-base measured at 0.99999 / 0.99998)."""
    cpu = torch.device("cpu")
    frames = np.random.default_rng(1).integers(0, 255, (4, 72, 96, 3), dtype=np.uint8)
    image = {p: ImageEncoder("resnet18", "random", cpu, image_size=64, resize_size=72, precision=p)
             for p in ("fp32", "bf16")}
    assert image["bf16"].amp_dtype == torch.bfloat16 and image["fp32"].amp_dtype is None
    pixels = image["fp32"].preprocess(frames)
    full, half = (image[p].encode(pixels, batch_size=4) for p in ("fp32", "bf16"))
    assert half.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(full, half, dim=1).min() > 0.999
    cues = [["hello", "there", "friend"], ["the", "red", "square", "moves", "left"]]
    text = {p: TextEncoder(str(tiny_bert), cpu, max_length=32, precision=p).encode_cues(cues) for p in ("fp32", "bf16")}
    assert text["fp32"].keys() == text["bf16"].keys()
    for key, tokens in text["fp32"].items():
        cosine = torch.nn.functional.cosine_similarity(tokens.features, text["bf16"][key].features, dim=1)
        assert cosine.min() > 0.999, key
