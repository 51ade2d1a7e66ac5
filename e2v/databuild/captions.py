"""Captions (registry kind ``captioner``). A build runs its captioners in order; the first that returns text wins.

- ``sidecar``: a caption file beside the video: ``<video>.txt`` (one caption for every clip) or ``<video>.json``:
  ``{"caption": ...}``, ``{"shots": [{"start": s, "end": s, "caption": ...}, ...]}`` (times in seconds; a clip
  takes the entry its start falls in) or ``{"shots": [caption, ...]}`` (by the detector's shot order).
- ``template`` (default fallback): "a person and a red object move left across a green background", from the
  detected elements' kinds (the detector's: ``human`` and ``face`` are a person, without a colour word) and colours
  and their common motion.
- ``vlm`` (``e2v.databuild.plugins``): a local vision-language model folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from e2v.databuild.stages import ClipContext
from e2v.registry import register

KIND_WORDS = {"human": "person", "face": "person", "animal": "animal", "background": "background"}
UNCOLOURED = ("human", "face")  # a crop's mean colour names clothes and skin at once: people get no colour word
HUES = ((15, "red"), (40, "orange"), (70, "yellow"), (165, "green"), (255, "blue"), (290, "purple"), (335, "pink"),
        (360, "red"))


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """``float [N, 3]`` HSV, each in [0, 1], of ``float [N, 3]`` RGB pixels in [0, 1] (:func:`colorsys.rgb_to_hsv`
    on every row at once)."""
    high, spread = rgb.max(axis=1), np.ptp(rgb, axis=1)
    r, g, b = ((high - rgb.T) / np.maximum(spread, 1e-12))
    hue = np.where(rgb[:, 0] == high, b - g, np.where(rgb[:, 1] == high, 2.0 + r - b, 4.0 + g - r))
    hue = np.where(spread > 0, (hue / 6.0) % 1.0, 0.0)
    return np.stack([hue, np.where(high > 0, spread / np.maximum(high, 1e-12), 0.0), high], axis=1)


def _pixel_words(rgb: np.ndarray) -> np.ndarray:
    """A basic colour word per ``float [N, 3]`` RGB pixel in [0, 1] (str ``[N]``): black, white, grey, brown, a hue
    word, or "dark" + a hue word for a dark but strongly coloured pixel (a dim red room is no black one)."""
    hsv = rgb_to_hsv(rgb.reshape(-1, 3))
    hue, saturation, value = hsv[:, 0] * 360, hsv[:, 1], hsv[:, 2]
    hues = np.array([word for _, word in HUES])[np.searchsorted([limit for limit, _ in HUES], hue, side="right")
                                                  .clip(0, len(HUES) - 1)]
    words = np.where((hue >= 15) & (hue < 45) & (value < 0.6), "brown", hues).astype(object)
    words[saturation < 0.2] = "grey"
    words[(saturation < 0.2) & (value > 0.85)] = "white"
    dark = value < 0.2
    words[dark] = np.where(saturation[dark] >= 0.5, "dark " + hues[dark].astype(object), "black")
    words[value < 0.08] = "black"
    return words


def colour_name(pixels: np.ndarray, samples: int = 2048) -> str:
    """The colour word most of ``uint8 [..., 3]`` pixels have (white canvas pixels are ignored; at most ``samples``
    evenly spread pixels are named). Not the mean colour's word: a green lawn crossed by a grey road averages yellow
    (OpenCV's vtest.avi)."""
    flat = pixels.reshape(-1, 3)
    kept = flat[(flat < 240).any(axis=1)]
    kept = kept if len(kept) else flat
    kept = kept[np.linspace(0, len(kept) - 1, min(samples, len(kept))).astype(int)]
    words, counts = np.unique(_pixel_words(kept.astype(np.float64) / 255), return_counts=True)
    return str(words[np.argmax(counts)])


def with_article(words: str) -> str:
    """``words`` after "a" or, before a vowel, "an": "an orange background"."""
    return ("an " if words[0] in "aeiou" else "a ") + words


PLURALS = {"person": "people"}
COUNTS = {2: "two", 3: "three", 4: "four", 5: "five"}


def _phrases(elements: list[dict]) -> list[str]:
    """One noun phrase per distinct (colour, kind) of ``elements`` in their order: "a red object", "two people"."""
    words = []
    for element in elements:
        kind = element.get("kind", "object")
        noun = KIND_WORDS.get(kind, "object")
        colour = None if kind in UNCOLOURED else element.get("colour")
        words.append((f"{colour} " if colour else "", noun))
    phrases = []
    for adjective, noun in dict.fromkeys(words):
        count = words.count((adjective, noun))
        phrases.append(with_article(adjective + noun) if count == 1 else
                       f"{COUNTS.get(count, str(count))} {adjective}{PLURALS.get(noun, noun + 's')}")
    return phrases


@register("captioner", "template")
class TemplateCaptioner:
    """Caption from the detected elements (kind, colour), their motion and the background colour."""

    def caption(self, clip: ClipContext) -> str | None:
        phrases = _phrases(clip.elements)
        if not phrases:
            return f"{clip.background} with nothing moving"
        subjects = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        verb = "moves" if len(clip.elements) == 1 else "move"
        if clip.direction == "still":
            return f"{subjects} in front of {clip.background}"
        return f"{subjects} {verb} {clip.direction} across {clip.background}"


@register("captioner", "sidecar")
class SidecarCaptioner:
    """Caption from a ``<video>.txt`` or ``<video>.json`` file beside the video (None when there is none)."""

    def caption(self, clip: ClipContext) -> str | None:
        video = Path(clip.video)
        text_file, json_file = video.with_suffix(".txt"), video.with_suffix(".json")
        if text_file.is_file():
            return text_file.read_text(encoding="utf-8").strip() or None
        if not json_file.is_file():
            return None
        try:
            data = json.loads(json_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"sidecar caption file {json_file} is not valid JSON ({err})") from err
        if isinstance(data, dict) and isinstance(data.get("caption"), str):
            return data["caption"].strip() or None
        shots = data.get("shots") if isinstance(data, dict) else None
        if not isinstance(shots, list):
            raise ValueError(f"sidecar caption file {json_file} must hold {{'caption': str}} or {{'shots': [...]}}")
        for entry in shots:
            if isinstance(entry, dict):
                try:
                    if float(entry["start"]) - 1e-6 <= clip.time < float(entry["end"]):
                        return str(entry["caption"]).strip() or None
                except (KeyError, TypeError, ValueError) as err:
                    raise ValueError(f"sidecar caption file {json_file}: shot entries need start, end (seconds) and "
                                     f"caption, got {entry!r}"[:300]) from err
        if clip.shot < len(shots) and isinstance(shots[clip.shot], str):
            return shots[clip.shot].strip() or None
        return None
