"""The prompt encoder: umT5 encoder (transformers ``UMT5EncoderModel``) + tokenizer, Wan2.1 conventions.

``forward(prompts) -> [B, max_length, dim]``: the last hidden state of each cleaned prompt (encoded with its
attention mask), with every position after the prompt's own tokens (``</s>`` included) set to zero.
Loads the official release layout (``text_encoder/`` + ``tokenizer/``) from local folders only; a ``"tiny"``
preset builds a deterministic random 2-layer model around the tokenizer shipped in ``e2v/assets/tiny_tokenizer``.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

import torch

from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

from e2v.modules.frozen import FrozenWrapper
from e2v.modules.quantize import quantize_linears
from e2v.modules.weights import CheckpointError, parse_dtype
from e2v.registry import register

TINY_TOKENIZER = Path(__file__).resolve().parent.parent / "assets" / "tiny_tokenizer"
TINY_SEED = 0


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning without ftfy: html-unescape twice, collapse whitespace, strip."""
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


def tiny_config(vocab_size: int) -> UMT5Config:
    """A 2-layer, 32-wide umT5 encoder config (gated GELU like umT5-XXL) for tests."""
    return UMT5Config(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        tie_word_embeddings=False,
    )


def _require_folder(folder: Path, what: str) -> Path:
    if not folder.is_dir():
        raise CheckpointError(f"{what} folder {folder} does not exist or is not a directory")
    return folder


class TextEncoder(FrozenWrapper):
    """umT5 encoder + tokenizer: ``forward(prompts: list[str]) -> [B, max_length, dim]`` zero-padded text states."""

    def __init__(self, model: UMT5EncoderModel, tokenizer, max_length: int = 512, frozen: bool = True) -> None:
        super().__init__()
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.dim = model.config.d_model
        self.freeze(frozen)

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cleaned prompts -> (token ids ``[B, max_length]``, attention mask ``[B, max_length]``)."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"prompts must be a list of strings, got {type(prompts).__name__}")
        tokens = self.tokenizer(
            [clean_prompt(p) for p in prompts],
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return tokens.input_ids, tokens.attention_mask

    def forward(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> ``[B, max_length, dim]``: last hidden states, zero after each prompt's tokens."""
        device = self.model.get_input_embeddings().weight.device
        ids, mask = (t.to(device) for t in self.tokenize(prompts))
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            states = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return states.masked_fill(mask.unsqueeze(-1) == 0, 0.0)

    @classmethod
    def from_preset(cls, preset: str = "tiny", max_length: int = 512, dtype: torch.dtype | None = None) -> "TextEncoder":
        """A random model: ``"tiny"`` (seeded, identical on every build) with the shipped tiny tokenizer."""
        if preset != "tiny":
            raise ValueError(f"unknown text encoder preset {preset!r}; presets: tiny (real weights load by path)")
        tokenizer = AutoTokenizer.from_pretrained(TINY_TOKENIZER, local_files_only=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_SEED)
            model = UMT5EncoderModel(tiny_config(len(tokenizer)))
        return cls(model.to(dtype or torch.float32), tokenizer, max_length)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        tokenizer_path: str | os.PathLike | None = None,
        max_length: int = 512,
        dtype: torch.dtype | None = None,
    ) -> "TextEncoder":
        """Load from a checkpoint root holding ``text_encoder/`` + ``tokenizer/``, or from explicit folders.

        ``path``: the root, or the encoder folder itself (then ``tokenizer_path`` names the tokenizer folder).
        Local files only, safetensors only, no remote code. ``dtype=None`` keeps the checkpoint's dtype.
        """
        path = _require_folder(Path(path), "text encoder checkpoint")
        if tokenizer_path is None:
            if not (path / "text_encoder").is_dir() or not (path / "tokenizer").is_dir():
                raise CheckpointError(
                    f"{path} is not a checkpoint root: expected both text_encoder/ and tokenizer/ in it "
                    "(or pass the encoder folder as path and the tokenizer folder as tokenizer_path)"
                )
            path, tokenizer_path = path / "text_encoder", path / "tokenizer"
        tokenizer_path = _require_folder(Path(tokenizer_path), "tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=True, trust_remote_code=False)
        model = UMT5EncoderModel.from_pretrained(
            path, local_files_only=True, use_safetensors=True, trust_remote_code=False, dtype=dtype or "auto"
        )
        return cls(model, tokenizer, max_length)

    def save_pretrained(self, root: str | os.PathLike) -> None:
        """Write ``root/text_encoder/`` (config + safetensors) and ``root/tokenizer/``, the release layout."""
        root = Path(root)
        self.model.save_pretrained(root / "text_encoder")
        self.tokenizer.save_pretrained(root / "tokenizer")


@register("text_encoder", "umt5")
def umt5(
    preset: str = "tiny",
    path: str | None = None,
    max_length: int = 512,
    quantize: str | None = None,
    dtype: str | torch.dtype | None = None,
    tokenizer_path: str | None = None,
) -> TextEncoder:
    """umT5 encoder (Wan2.1 text encoder): from ``path`` (checkpoint root, or encoder folder + ``tokenizer_path``)
    or, without a path, from ``preset``; ``quantize``: None, ``"int8"`` or ``"nf4"`` weight-only."""
    dtype = parse_dtype(dtype)
    if path is None:
        encoder = TextEncoder.from_preset(preset, max_length, dtype)
    else:
        encoder = TextEncoder.from_pretrained(path, tokenizer_path, max_length, dtype)
    if quantize is not None:
        quantize_linears(encoder.model, quantize)
    return encoder
