"""Reference encoders (umT5 text, CLIP image) against direct transformers forwards, folder loading, quantisation."""

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer, CLIPImageProcessor, CLIPVisionModel, UMT5EncoderModel

from e2v.modules.image_encoder import ImageEncoder
from e2v.modules.quantize import quantize_linears, weight_bytes
from e2v.modules.text_encoder import TINY_TOKENIZER, TextEncoder, clean_prompt
from e2v.modules.weights import CheckpointError
from e2v.registry import build

PROMPTS = ["A man walks his dog on the beach at night", "  a  red\n\tcar &amp;amp; a   cat  "]


@pytest.fixture(scope="module")
def text_encoder():
    return build("text_encoder", {"name": "umt5", "max_length": 24})


@pytest.fixture(scope="module")
def image_encoder():
    return build("image_encoder", "clip")


def references(batch, count, size, seed=0):
    """Random uint8 references ``[B, N, S, S, 3]`` and the same as ``[B, N, 3, S, S]`` floats in [-1, 1]."""
    pixels = np.random.default_rng(seed).integers(0, 256, (batch, count, size, size, 3), dtype=np.uint8)
    images = torch.from_numpy(pixels).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
    return pixels, images


# ---- text encoder ----


def test_clean_prompt_unescapes_twice_and_collapses_whitespace():
    assert clean_prompt("  a  red\n\tcar &amp;amp; a   cat  ") == "a red car & a cat"
    assert clean_prompt("&lt;b&gt;") == "<b>"


def test_text_states_shape_and_zero_padding_after_real_tokens(text_encoder):
    states = text_encoder(PROMPTS)
    assert states.shape == (2, 24, text_encoder.dim) and text_encoder.dim == 32
    _, mask = text_encoder.tokenize(PROMPTS)
    lengths = mask.sum(1)
    assert lengths.tolist() == [11, 8]  # 10 words + </s>; "a red car & a cat": 5 words, "▁", "&", </s>
    for row, length in zip(states, lengths):
        assert row[length:].abs().max() == 0
        assert (row[:length].abs().sum(-1) > 0).all()


def test_text_matches_direct_transformers_forward(text_encoder):
    tokenizer = AutoTokenizer.from_pretrained(TINY_TOKENIZER, local_files_only=True)
    model = UMT5EncoderModel(text_encoder.model.config).eval()
    model.load_state_dict(text_encoder.model.state_dict())
    cleaned = [clean_prompt(p) for p in PROMPTS]
    states = text_encoder(PROMPTS)
    for prompt, row in zip(cleaned, states):
        ids = tokenizer(prompt, return_tensors="pt").input_ids  # unpadded: real tokens only
        with torch.no_grad():
            expected = model(input_ids=ids).last_hidden_state[0]
        torch.testing.assert_close(row[: ids.shape[1]], expected, rtol=1e-5, atol=1e-5)


def test_text_cleaning_applies_before_encoding_and_padding_length_does_not_change_states(text_encoder):
    longer = TextEncoder(text_encoder.model, text_encoder.tokenizer, max_length=40)
    messy, clean = text_encoder(["  a  red\n car &amp;amp; x "]), longer(["a red car & x"])
    torch.testing.assert_close(messy[0], clean[0, :24], rtol=1e-5, atol=1e-6)
    assert clean[0, 24:].abs().max() == 0


def test_text_truncates_long_prompts_to_max_length(text_encoder):
    states = text_encoder([" ".join(["dog"] * 100)])
    assert states.shape == (1, 24, 32) and (states[0].abs().sum(-1) > 0).all()


def test_tiny_text_encoder_is_deterministic_and_frozen(text_encoder):
    again = build("text_encoder", {"name": "umt5", "max_length": 24})
    for (name, a), b in zip(text_encoder.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    assert not any(p.requires_grad for p in again.parameters())
    again.train()
    assert again.training and not again.model.training  # dropout stays off under a training parent
    with pytest.raises(TypeError, match="list of strings"):
        again("a single string")


def test_text_encoder_loads_release_layout_and_errors_name_the_missing_folder(text_encoder, tmp_path):
    text_encoder.model.save_pretrained(tmp_path / "text_encoder")
    text_encoder.tokenizer.save_pretrained(tmp_path / "tokenizer")
    loaded = build("text_encoder", {"name": "umt5", "path": str(tmp_path), "max_length": 24, "dtype": "float32"})
    assert torch.equal(loaded(PROMPTS), text_encoder(PROMPTS))
    explicit = TextEncoder.from_pretrained(tmp_path / "text_encoder", tmp_path / "tokenizer", max_length=24)
    assert torch.equal(explicit(PROMPTS), text_encoder(PROMPTS))

    (tmp_path / "tokenizer").rename(tmp_path / "tok")
    with pytest.raises(CheckpointError, match="text_encoder/ and tokenizer/"):
        TextEncoder.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        TextEncoder.from_pretrained(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="tokenizer folder"):
        TextEncoder.from_pretrained(tmp_path / "text_encoder", tmp_path / "tokenizer")


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_quantised_text_encoder_runs(text_encoder, mode):
    quantised = build("text_encoder", {"name": "umt5", "max_length": 24, "quantize": mode})
    states, reference = quantised(PROMPTS), text_encoder(PROMPTS)
    assert states.shape == reference.shape and torch.isfinite(states).all()
    assert torch.equal(states == 0, reference == 0)  # same zero padding
    if mode == "int8":  # nf4 is too coarse for a 32-wide random model to stay close; int8 is near-exact
        real = reference.abs().sum(-1) > 0
        assert F.cosine_similarity(states[real], reference[real], dim=-1).min() > 0.99


# ---- image encoder ----


@pytest.mark.parametrize("count", [1, 2, 3])
def test_image_tokens_are_clip_penultimate_states_of_every_reference(image_encoder, count):
    pixels, images = references(2, count, 32, seed=count)
    tokens = image_encoder(images)
    assert image_encoder.tokens_per_image == 17 and image_encoder.image_size == 32
    assert tokens.shape == (2, count * 17, 32)

    model = CLIPVisionModel(image_encoder.model.config).eval()
    model.load_state_dict(image_encoder.model.state_dict())
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    for b in range(2):
        for n in range(count):
            pixel_values = processor(images=pixels[b, n], return_tensors="pt").pixel_values
            with torch.no_grad():
                expected = model(pixel_values=pixel_values, output_hidden_states=True).hidden_states[-2][0]
            torch.testing.assert_close(tokens[b, n * 17 : (n + 1) * 17], expected, rtol=1e-4, atol=1e-4)


def test_image_encoder_resizes_larger_squares_like_the_processor(image_encoder):
    pixels, images = references(1, 1, 64, seed=7)
    tokens = image_encoder(images)[0]
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pixel_values = processor(images=pixels[0, 0], return_tensors="pt").pixel_values
    with torch.no_grad():
        expected = image_encoder.model(pixel_values=pixel_values, output_hidden_states=True).hidden_states[-2][0]
    assert F.cosine_similarity(tokens, expected, dim=-1).min() > 0.98  # torch vs PIL bicubic differ slightly


def test_image_pooled_is_the_class_token_per_reference(image_encoder):
    _, images = references(2, 3, 32)
    pooled = image_encoder.pooled(images)
    assert pooled.shape == (2, 3, 32)
    with torch.no_grad():
        expected = image_encoder.model(pixel_values=image_encoder.preprocess(images)).pooler_output
    torch.testing.assert_close(pooled.flatten(0, 1), expected)


def test_image_encoder_rejects_bad_shapes(image_encoder):
    with pytest.raises(ValueError, match=r"\[B, N, 3, S, S\]"):
        image_encoder(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="squares"):
        image_encoder(torch.zeros(1, 1, 3, 32, 48))


def test_image_encoder_loads_release_layout_with_its_processor_statistics(image_encoder, tmp_path):
    image_encoder.model.save_pretrained(tmp_path / "image_encoder")
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    CLIPImageProcessor(image_mean=mean, image_std=std).save_pretrained(tmp_path / "image_processor")
    loaded = build("image_encoder", {"name": "clip", "path": str(tmp_path)})
    assert loaded.image_mean == tuple(mean) and loaded.image_std == tuple(std)
    pixels, images = references(1, 2, 32)
    normalised = (torch.from_numpy(pixels[0]).permute(0, 3, 1, 2) / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(
        std
    ).view(3, 1, 1)
    with torch.no_grad():
        expected = image_encoder.model(pixel_values=normalised, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(loaded(images)[0], expected.flatten(0, 1), rtol=1e-4, atol=1e-4)

    image_encoder.save_pretrained(tmp_path / "again")  # own writer round-trips
    assert torch.equal(ImageEncoder.from_pretrained(tmp_path / "again")(images), image_encoder(images))

    json_path = tmp_path / "image_processor" / "preprocessor_config.json"
    json_path.write_text(json.dumps({"image_mean": [0.5]}))
    with pytest.raises(CheckpointError, match="image_std"):
        ImageEncoder.from_pretrained(tmp_path)
    (tmp_path / "image_processor").rename(tmp_path / "processor")
    with pytest.raises(CheckpointError, match="image_processor/"):
        ImageEncoder.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        ImageEncoder.from_pretrained(tmp_path / "missing")


def test_tiny_image_encoder_is_deterministic_and_frozen(image_encoder):
    again = build("image_encoder", {"name": "clip", "preset": "tiny"})
    for (name, a), b in zip(image_encoder.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    assert not any(p.requires_grad for p in again.parameters())
    with pytest.raises(ValueError, match="unknown image encoder preset"):
        build("image_encoder", {"name": "clip", "preset": "vit-h"})


@pytest.mark.parametrize("mode, tolerance", [("int8", 0.02), ("nf4", 0.2)])
def test_quantised_image_encoder_stays_close(image_encoder, mode, tolerance):
    quantised = build("image_encoder", {"name": "clip", "quantize": mode})
    _, images = references(2, 2, 32)
    tokens, reference = quantised(images), image_encoder(images)
    assert ((tokens - reference).norm() / reference.norm()).item() < tolerance


# ---- quantisation ----


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256))


@pytest.mark.parametrize("mode, tolerance, max_fraction", [("int8", 0.02, 0.3), ("nf4", 0.2, 0.15)])
def test_quantised_mlp_is_close_and_smaller(mode, tolerance, max_fraction):
    model = mlp()
    x = torch.randn(16, 256)
    with torch.no_grad():
        reference = model(x)
        quantised = quantize_linears(copy.deepcopy(model), mode)
        out = quantised(x)
    assert out.dtype == torch.float32
    assert ((out - reference).norm() / reference.norm()).item() < tolerance
    assert not any(type(m) is nn.Linear for m in quantised.modules())
    assert weight_bytes(quantised) < max_fraction * weight_bytes(model)


def test_quantize_skips_named_layers_and_rejects_bad_input():
    model = quantize_linears(mlp(), "int8", skip=["2"])
    assert type(model[2]) is nn.Linear and type(model[0]) is not nn.Linear
    with pytest.raises(ValueError, match="unknown quantisation mode"):
        quantize_linears(mlp(), "fp4")
    with pytest.raises(ValueError, match="no nn.Linear"):
        quantize_linears(mlp(), "int8", skip=["*"])
