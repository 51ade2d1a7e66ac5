"""Write the tiny test tokenizer shipped in ``e2v/assets/tiny_tokenizer`` (run once; the output is committed).

A Unigram model (the umT5 tokenizer's algorithm) over every printable ASCII character plus a few hundred lowercase
words common in video prompts, with umT5's special ids: ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2. Text is
NFKC-normalised and lower-cased; words become ``▁word`` pieces (SentencePiece's Metaspace); ``</s>`` is appended.
Any ASCII text tokenizes without ``<unk>``: unknown words fall back to single characters.

    python tools/make_tiny_tokenizer.py [output_folder]
"""

from __future__ import annotations

import string
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")
WORDS = """
a an the of and or in on at to from with without by for as is are was be it its this that these those he she they
his her their him them we you i my our your one two three four five man woman men women person people boy girl
child children baby old young face hair eyes hand hands head body dress shirt jacket hat glasses smile smiling
walks walking runs running sits sitting stands standing holds holding looks looking turns turning talks talking
dances dancing plays playing eats eating drinks drinking jumps jumping rides riding waves waving moves moving
camera shot close up wide view scene background foreground left right center front behind near far slowly quickly
red orange yellow green blue purple pink white black gray grey brown gold silver bright dark light soft warm cold
sun sunlight night day morning evening sky cloud clouds rain snow water sea ocean river lake beach sand mountain
forest tree trees grass flower flowers garden park street road city building house room kitchen table chair bed
window door wall floor car bike bicycle boat train plane dog cat bird horse fish cup coffee book phone ball toy
astronaut rocket space moon star stars video frame motion high quality detailed realistic cinematic style
lighting portrait natural smooth static blurry low worst bad ugly deformed overexposed subtitles text watermark
""".split()


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny Unigram tokenizer wrapped as a transformers fast tokenizer."""
    characters = ["▁"] + [c for c in string.printable if not c.isspace()]
    words = sorted(set(WORDS))
    vocab = [(token, 0.0) for token in SPECIAL_TOKENS]
    vocab += [(f"▁{word}", -5.0) for word in words]  # whole words beat their spelling (5 < 10 per character)
    vocab += [(char, -10.0) for char in characters]
    model = Tokenizer(Unigram(vocab, unk_id=SPECIAL_TOKENS.index("<unk>")))
    model.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    model.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    model.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    model.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=model, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


def main(folder: str = "e2v/assets/tiny_tokenizer") -> None:
    build_tokenizer().save_pretrained(folder)
    print(f"wrote {sorted(p.name for p in Path(folder).iterdir())} to {folder}")


if __name__ == "__main__":
    main(*sys.argv[1:])
