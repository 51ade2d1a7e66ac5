"""Heavy-model plug-ins of the data build, loaded only from local transformers folders (never downloaded):

- ``element_embedder`` ``image_encoder``: CLIP / CLIP vision / DINOv2 / SigLIP image features (via
  :class:`e2v.bench.embedders.TransformersEmbedder`), L2-normalised.
- ``captioner`` ``vlm``: a vision-language model (BLIP, LLaVA, Qwen2-VL, ...) captions sampled frames of a clip.
- ``element_detector`` ``grounded``: open-vocabulary boxes (GroundingDINO, OWL-ViT, OWLv2) for text queries, each
  query mapped to an element kind, optionally segmented by SAM or SAM2 prompted with the boxes.

transformers is imported when a component is built, not when this module is imported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from e2v.databuild.stages import ClipContext, Detection
from e2v.registry import register

DEFAULT_LABELS = {"a person": "human", "a face": "face", "an animal": "animal", "an object": "object"}
DEFAULT_CHAT_PROMPT = "Describe this video in one sentence."
GROUNDING_TYPES = ("grounding-dino", "mm-grounding-dino")  # one text prompt of "."-separated phrases per image
SEGMENTER_CLASSES = {"sam": "SamModel", "sam2": "Sam2Model", "sam2_video": "Sam2Model"}  # box-prompted, per image


def local_folder(path: str, what: str) -> Path:
    """``path`` as a Path, checked to be a local transformers folder (a directory with a config.json)."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{what} path {folder} is not a local transformers folder with a config.json "
                                "(models are never downloaded: save one with save_pretrained)")
    return folder


def load_processor(folder: Path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(folder, local_files_only=True)


def load_segmenter(folder: Path):
    """``(processor, model)`` of a local SAM or SAM2 folder (image model; a SAM2 video checkpoint loads its image
    part); any other model type is refused naming the folder."""
    import transformers

    model_type = transformers.AutoConfig.from_pretrained(folder, local_files_only=True).model_type
    if model_type not in SEGMENTER_CLASSES:
        raise ValueError(f"grounded segmenter: {folder} holds a {model_type!r} model; expected one of "
                         f"{sorted(SEGMENTER_CLASSES)} (SAM, SAM2)")
    model = getattr(transformers, SEGMENTER_CLASSES[model_type]).from_pretrained(folder, local_files_only=True)
    return load_processor(folder), model


def even_indices(count: int, wanted: int) -> np.ndarray:
    """``min(wanted, count)`` indices spread evenly over ``count`` frames, each the centre of its span (1: middle)."""
    wanted = max(1, min(wanted, count))
    return ((np.arange(wanted) + 0.5) * count / wanted).astype(int)


@register("element_embedder", "image_encoder")
class ImageEncoderEmbedder:
    """Image features of a local transformers folder (CLIP, CLIP vision, DINOv2, SigLIP), L2-normalised."""

    def __init__(self, path: str, device: str = "cpu", batch_size: int = 32) -> None:
        from e2v.bench.embedders import TransformersEmbedder

        self.encoder = TransformersEmbedder(str(local_folder(path, "image_encoder")), batch=batch_size)
        self.encoder.model.to(device)

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        """``float32 [N, D]`` unit embeddings of crops ``uint8 [h, w, 3]`` (white-padded to squares)."""
        if not crops:
            return np.zeros((0, self.dim), np.float32)
        return F.normalize(self.encoder.embed(crops).float(), dim=-1).cpu().numpy()

    @property
    def dim(self) -> int:
        """The embedding size (measured on a white square)."""
        return self.encoder.embed([np.full((8, 8, 3), 255, np.uint8)]).shape[1]


def load_vlm(folder: Path):
    """An image-text-to-text model of ``folder`` (AutoModelForVision2Seq when the installed transformers has it
    and AutoModelForImageTextToText does not know the model)."""
    import transformers

    errors = []
    for name in ("AutoModelForImageTextToText", "AutoModelForVision2Seq"):
        auto = getattr(transformers, name, None)
        if auto is None:
            continue
        try:
            return auto.from_pretrained(folder, local_files_only=True)
        except ValueError as err:  # an unrecognised configuration class
            errors.append(f"{name}: {err}")
    raise ValueError(f"captioner folder {folder} holds no image-text-to-text model; " + "; ".join(errors))


@register("captioner", "vlm")
class VlmCaptioner:
    """A local vision-language model (BLIP, LLaVA, Qwen2-VL, ...) captions evenly sampled frames (greedy decoding)."""

    def __init__(self, path: str, prompt: str | None = None, max_new_tokens: int = 40, frames: int = 1,
                 device: str = "cpu") -> None:
        folder = local_folder(path, "captioner")
        self.processor = load_processor(folder)
        self.model = load_vlm(folder).to(device).eval()
        # chat models (a chat template) take several images and need a prompt; others (BLIP) one image, prompt optional
        self.chat = getattr(self.processor, "chat_template", None) is not None
        self.prompt = DEFAULT_CHAT_PROMPT if prompt is None and self.chat else prompt
        self.frames = frames if self.chat else 1
        self.max_new_tokens = max_new_tokens

    @torch.no_grad()
    def caption(self, clip: ClipContext) -> str | None:
        """The generated text for ``clip.frames`` ``uint8 [F, H, W, 3]``; None when it is empty."""
        images = list(clip.frames[even_indices(len(clip.frames), self.frames)])
        text = self.prompt
        if self.chat:
            content = [{"type": "image"}] * len(images) + [{"type": "text", "text": self.prompt}]
            text = self.processor.apply_chat_template([{"role": "user", "content": content}],
                                                      add_generation_prompt=True)
        inputs = self.processor(images=images, text=text, return_tensors="pt")
        inputs = inputs.to(self.model.device, dtype=self.model.dtype)
        tokens = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)[0].cpu()
        if "input_ids" in inputs:  # decoder-only models (and BLIP, less its [SEP]) echo the prompt first
            prompt = inputs["input_ids"][0].cpu()
            length = min(len(prompt), len(tokens))
            same = (tokens[:length] == prompt[:length]).long().cumprod(0).sum().item()
            tokens = tokens[same:]
        caption = self.processor.decode(tokens, skip_special_tokens=True).strip()
        return caption or None


@register("element_detector", "grounded")
class GroundedDetector:
    """Open-vocabulary boxes (GroundingDINO, OWL-ViT, OWLv2) for text queries -> kinds, masks by SAM or SAM2 when
    given."""

    def __init__(self, detector: str, segmenter: str | None = None, labels: dict[str, str] | None = None,
                 box_threshold: float = 0.3, text_threshold: float = 0.25, every: int = 1,
                 device: str = "cpu") -> None:
        from transformers import AutoModelForZeroShotObjectDetection

        if every < 1:
            raise ValueError(f"grounded detector 'every' must be >= 1, got {every}")
        folder = local_folder(detector, "grounded detector")
        self.processor = load_processor(folder)
        self.model = AutoModelForZeroShotObjectDetection.from_pretrained(folder, local_files_only=True)
        self.model.to(device).eval()
        self.grounding = self.model.config.model_type in GROUNDING_TYPES
        self.labels = dict(labels or DEFAULT_LABELS)
        self.queries = list(self.labels)
        self.box_threshold, self.text_threshold, self.every, self.device = box_threshold, text_threshold, every, device
        self.segmenter = self.segmenter_processor = None
        if segmenter is not None:
            self.segmenter_processor, self.segmenter = load_segmenter(local_folder(segmenter, "grounded segmenter"))
            self.segmenter.to(device).eval()

    def detect(self, frames: np.ndarray, plate: np.ndarray | None = None) -> list[list[Detection]]:
        """One list of detections per frame of ``uint8 [F, H, W, 3]``; the detector runs on every ``every``-th frame
        and the frames in between reuse its latest detections. ``plate`` is not used."""
        found: list[list[Detection]] = []
        for index, frame in enumerate(frames):
            found.append(self.detect_frame(frame) if index % self.every == 0 else found[-1])
        return found

    @torch.no_grad()
    def detect_frame(self, frame: np.ndarray) -> list[Detection]:
        height, width = frame.shape[:2]
        if self.grounding:
            inputs = self.processor(images=frame, text=". ".join(self.queries) + ".", return_tensors="pt")
            outputs = self.model(**inputs.to(self.device))
            result = self.processor.post_process_grounded_object_detection(
                outputs, inputs["input_ids"], threshold=self.box_threshold, text_threshold=self.text_threshold,
                target_sizes=[(height, width)])[0]
        else:
            inputs = self.processor(text=[self.queries], images=frame, return_tensors="pt")
            outputs = self.model(**inputs.to(self.device))
            result = self.processor.post_process_grounded_object_detection(
                outputs, threshold=self.box_threshold, target_sizes=[(height, width)], text_labels=[self.queries])[0]
        boxes = result["boxes"].float().cpu()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores = boxes[keep], result["scores"].cpu()[keep]
        phrases = [phrase for phrase, kept in zip(result["text_labels"], keep.tolist()) if kept]
        masks = self.segment(frame, boxes) if self.segmenter is not None else [None] * len(boxes)
        return [Detection(tuple(box.tolist()), mask, self.kind_of(phrase), float(score))
                for box, mask, phrase, score in zip(boxes, masks, phrases, scores)]

    def kind_of(self, phrase: str) -> str:
        """The kind of the query sharing most words with a detected phrase (the first on ties; "object" if none)."""
        words = set(phrase.lower().replace(".", " ").split())
        overlap = [len(words & set(query.lower().split())) for query in self.queries]
        best = int(np.argmax(overlap))
        return self.labels[self.queries[best]] if overlap[best] else "object"

    def segment(self, frame: np.ndarray, boxes: torch.Tensor) -> list[np.ndarray]:
        """SAM / SAM2 masks ``bool [H, W]`` of ``frame``, one per box ``[N, 4]``."""
        if not len(boxes):
            return []
        inputs = self.segmenter_processor(images=frame, input_boxes=[boxes.tolist()], return_tensors="pt")
        outputs = self.segmenter(**inputs.to(self.device), multimask_output=False)
        sizes = [inputs[key].cpu() for key in ("original_sizes", "reshaped_input_sizes") if key in inputs]  # SAM2: 1
        masks = self.segmenter_processor.post_process_masks(outputs.pred_masks.cpu(), *sizes)[0]
        return list(masks[:, 0].numpy().astype(bool))
