"""Data-build plug-ins on tiny random transformers models saved offline (image encoder, VLM captioner, grounded
detector with SAM) and dlib faces on LFW faces."""

import importlib.util

import numpy as np
import pytest
import torch
import transformers
from skimage import data as skdata

from e2v.databuild.plugins import DEFAULT_CHAT_PROMPT, even_indices
from e2v.databuild.stages import ClipContext, Detection, ElementDetector, ElementEmbedder, FaceDetector
from e2v.registry import build

QUERIES = {"a person": "human", "a red cat": "animal"}


def random_frames(count=3, height=40, width=48, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


# the vision tower every tiny model here shares (OWL-ViT, BLIP, LLaVA's CLIP, the CLIP/DINOv2 embedders)
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=32,
                   patch_size=8)


def clip_tokenizer():
    """A character-level CLIP tokenizer (no merges); start/end tokens last: OWL-ViT masks queries starting with id 0."""
    vocab = {}
    for char in "abcdefghijklmnopqrstuvwxyz":
        vocab[char], vocab[char + "</w>"] = len(vocab), len(vocab) + 1
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    return transformers.CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)


@pytest.fixture(scope="module")
def owlvit(tmp_path_factory):
    folder = tmp_path_factory.mktemp("owlvit")
    tokenizer = clip_tokenizer()
    image_processor = transformers.OwlViTImageProcessor(size={"height": 32, "width": 32},
                                                        crop_size={"height": 32, "width": 32})
    transformers.OwlViTProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    end = tokenizer.eos_token_id
    config = transformers.OwlViTConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=16, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=end, pad_token_id=end),
        vision_config=TINY_VISION,
        projection_dim=32)
    torch.manual_seed(0)
    transformers.OwlViTForObjectDetection(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def grounding_dino(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grounding_dino")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "a", "person", "red", "cat"]
    tokenizer = transformers.BertTokenizer(vocab={word: i for i, word in enumerate(words)}, model_max_length=32)
    image_processor = transformers.GroundingDinoImageProcessor(size={"shortest_edge": 32, "longest_edge": 64})
    transformers.GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    config = transformers.GroundingDinoConfig(
        backbone_config=dict(model_type="swin", embed_dim=8, depths=[1, 1], num_heads=[1, 1], window_size=2,
                             image_size=64, out_features=["stage1", "stage2"]),
        text_config=dict(model_type="bert", vocab_size=len(words), hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=32, max_position_embeddings=64),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=10, num_feature_levels=2,
        encoder_n_points=2, decoder_n_points=2, max_text_len=32, use_timm_backbone=False)
    torch.manual_seed(0)
    transformers.GroundingDinoForObjectDetection(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def sam(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sam")
    config = transformers.SamConfig(
        vision_config=dict(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=8, window_size=4, global_attn_indexes=[1], num_pos_feats=8,
                           mlp_dim=64),
        prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=16, mlp_dim=32, num_hidden_layers=1, num_attention_heads=2,
                                 iou_head_hidden_dim=16))
    torch.manual_seed(0)
    transformers.SamModel(config).save_pretrained(folder)
    image_processor = transformers.SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64},
                                                     mask_size={"longest_edge": 16},
                                                     mask_pad_size={"height": 16, "width": 16})
    transformers.SamProcessor(image_processor=image_processor).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def sam2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sam2")
    hiera = dict(model_type="sam2_hiera_det_model", hidden_size=8, num_attention_heads=1, image_size=[64, 64],
                 patch_kernel_size=[7, 7], patch_stride=[4, 4], patch_padding=[3, 3], blocks_per_stage=[1, 1, 2, 1],
                 embed_dim_per_stage=[8, 16, 32, 64], num_attention_heads_per_stage=[1, 1, 1, 1],
                 window_size_per_stage=[4, 4, 4, 2], global_attention_blocks=[3],
                 window_positional_embedding_background_size=[2, 2])
    config = transformers.Sam2Config(
        vision_config=dict(backbone_config=hiera, backbone_channel_list=[64, 32, 16, 8],
                           backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]], fpn_hidden_size=16),
        prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=16, mlp_dim=32, num_hidden_layers=1, num_attention_heads=2,
                                 iou_head_hidden_dim=16))
    torch.manual_seed(0)
    transformers.Sam2Model(config).save_pretrained(folder)
    image_processor = transformers.Sam2ImageProcessor(size={"height": 64, "width": 64},
                                                      mask_size={"height": 16, "width": 16})
    transformers.Sam2Processor(image_processor=image_processor).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def blip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("blip")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += "a photo of the red cat dog person walks runs on grass".split()
    tokenizer = transformers.BertTokenizer(vocab={word: i for i, word in enumerate(words)})
    image_processor = transformers.BlipImageProcessor(size={"height": 32, "width": 32})
    transformers.BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    config = transformers.BlipConfig(
        text_config=dict(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=64, encoder_hidden_size=32,
                         bos_token_id=tokenizer.cls_token_id, pad_token_id=tokenizer.pad_token_id,
                         sep_token_id=tokenizer.sep_token_id),
        vision_config=TINY_VISION,
        projection_dim=16)
    torch.manual_seed(0)
    transformers.BlipForConditionalGeneration(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    """A tiny random LLaVA with a chat template: the multi-image (chat) path of the VLM captioner."""
    folder = tmp_path_factory.mktemp("llava")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<image>"]
    words += "user assistant describe this video in one sentence . a cat walks on grass".split()
    tokenizer = transformers.BertTokenizer(vocab={word: i for i, word in enumerate(words)})
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    template = ("{% for m in messages %}{{ m['role'] }} {% for c in m['content'] %}{% if c['type'] == 'image' %}"
                "<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %} {% endfor %}"
                "{% if add_generation_prompt %}assistant {% endif %}")
    image_processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    transformers.LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                                vision_feature_select_strategy="default", chat_template=template,
                                num_additional_image_tokens=1).save_pretrained(folder)
    config = transformers.LlavaConfig(
        vision_config=dict(TINY_VISION, model_type="clip_vision_model", num_hidden_layers=2),
        text_config=dict(model_type="llama", vocab_size=len(words), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, pad_token_id=0, bos_token_id=2, eos_token_id=3),
        image_token_id=words.index("<image>"), vision_feature_layer=-1, vision_feature_select_strategy="default")
    torch.manual_seed(0)
    transformers.LlavaForConditionalGeneration(config).save_pretrained(folder)
    return str(folder)


# ---- grounded detector ----


def check_detections(found, frames, masked: bool):
    assert len(found) == len(frames)
    height, width = frames.shape[1:3]
    for detections in found:
        for detection in detections:
            assert isinstance(detection, Detection) and detection.kind in {"human", "animal"}
            x0, y0, x1, y1 = detection.box
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
            assert 0.0 <= detection.score <= 1.0
            if masked:
                assert detection.mask.dtype == bool and detection.mask.shape == (height, width)
            else:
                assert detection.mask is None


@pytest.mark.parametrize("segmenter", ["sam", "sam2"])
def test_grounded_owlvit_boxes_with_sam_masks(owlvit, segmenter, request):
    frames = random_frames()
    detector = build("element_detector", {"name": "grounded", "detector": owlvit,
                                          "segmenter": request.getfixturevalue(segmenter), "labels": QUERIES,
                                          "box_threshold": 0.0})
    assert isinstance(detector, ElementDetector)
    found = detector.detect(frames, None)
    assert all(found)  # threshold 0 keeps every box
    check_detections(found, frames, masked=True)
    boxes_only = build("element_detector", {"name": "grounded", "detector": owlvit, "labels": QUERIES,
                                            "box_threshold": 0.0})
    check_detections(boxes_only.detect(frames, None), frames, masked=False)
    nothing = build("element_detector", {"name": "grounded", "detector": owlvit, "box_threshold": 1.01})
    assert nothing.detect(frames, None) == [[], [], []]


def test_grounded_every_reuses_the_latest_detections(owlvit):
    frames = random_frames(count=5)
    every = build("element_detector", {"name": "grounded", "detector": owlvit, "labels": QUERIES,
                                       "box_threshold": 0.0, "every": 2})
    found = every.detect(frames, None)
    assert found[1] is found[0] and found[3] is found[2] and found[4] is not found[2]
    assert [d.box for d in found[4]] == [d.box for d in every.detect(frames[4:], None)[0]]


def test_grounded_grounding_dino_phrases_map_to_kinds(grounding_dino):
    frames = random_frames(count=2)
    detector = build("element_detector", {"name": "grounded", "detector": grounding_dino, "labels": QUERIES,
                                          "box_threshold": 0.0, "text_threshold": 0.0})
    assert detector.grounding
    found = detector.detect(frames, None)
    assert all(found)
    check_detections(found, frames, masked=False)
    assert detector.kind_of("red cat") == "animal" and detector.kind_of("person") == "human"
    assert detector.kind_of("tree") == "object"


def test_grounded_missing_folder_names_the_path(tmp_path, owlvit):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        build("element_detector", {"name": "grounded", "detector": str(tmp_path / "nope")})
    with pytest.raises(FileNotFoundError, match="segmenter.*" + str(tmp_path)):
        build("element_detector", {"name": "grounded", "detector": owlvit, "segmenter": str(tmp_path)})


# ---- VLM captioner ----


def test_vlm_captioner_blip_is_deterministic_text(blip):
    captioner = build("captioner", {"name": "vlm", "path": blip, "max_new_tokens": 6})
    clip = ClipContext(frames=random_frames(count=4))
    caption = captioner.caption(clip)
    assert isinstance(caption, str) and caption == caption.strip() and caption
    assert captioner.caption(clip) == caption
    assert captioner.frames == 1  # BLIP takes one image: the middle frame
    captioner.processor = RecordingProcessor(captioner.processor)
    captioner.caption(clip)
    assert len(captioner.processor.images[0]) == 1 and np.array_equal(captioner.processor.images[0][0], clip.frames[2])
    prompted = build("captioner", {"name": "vlm", "path": blip, "prompt": "a photo of", "max_new_tokens": 6})
    continued = prompted.caption(clip)
    assert isinstance(continued, str) and not continued.startswith("a photo")  # the echoed prompt is cut


class RecordingProcessor:
    """A processor that records the images it is called with."""

    def __init__(self, processor):
        self.processor, self.images = processor, []

    def __call__(self, images, **kwargs):
        self.images.append(images)
        return self.processor(images=images, **kwargs)

    def __getattr__(self, name):
        return getattr(self.processor, name)


def test_vlm_captioner_chat_model_sees_evenly_sampled_frames(llava):
    captioner = build("captioner", {"name": "vlm", "path": llava, "frames": 3, "max_new_tokens": 6})
    assert captioner.chat and captioner.frames == 3 and captioner.prompt == DEFAULT_CHAT_PROMPT
    captioner.processor = RecordingProcessor(captioner.processor)
    frames = random_frames(count=5)
    caption = captioner.caption(ClipContext(frames=frames))
    assert isinstance(caption, str) and caption and captioner.caption(ClipContext(frames=frames)) == caption
    assert np.array_equal(np.stack(captioner.processor.images[0]), frames[[0, 2, 4]])
    assert even_indices(5, 3).tolist() == [0, 2, 4] and even_indices(4, 1).tolist() == [2]
    assert even_indices(2, 5).tolist() == [0, 1]


def test_vlm_captioner_missing_folder_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"captioner path {tmp_path / 'missing'} "):
        build("captioner", {"name": "vlm", "path": str(tmp_path / "missing")})


# ---- image encoder embedder ----


@pytest.mark.parametrize("family", ["clip", "dinov2"])
def test_image_encoder_embeddings_are_unit_rows(tmp_path, family):
    torch.manual_seed(0)
    options = TINY_VISION
    if family == "clip":
        model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**options))
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**options))
    model.save_pretrained(tmp_path)
    embedder = build("element_embedder", {"name": "image_encoder", "path": str(tmp_path), "batch_size": 2})
    assert isinstance(embedder, ElementEmbedder)
    crops = [skdata.chelsea()[::8, ::8].copy(), skdata.coffee()[::8, ::8].copy(), skdata.astronaut()[::16, ::16].copy()]
    vectors = embedder.embed(crops)
    assert vectors.dtype == np.float32 and vectors.shape == (3, 32)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(embedder.embed(crops[:1]), vectors[:1], atol=1e-5)
    assert embedder.embed([]).shape == (0, 32)


def test_image_encoder_missing_config_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} is not a local transformers folder with a config.json"):
        build("element_embedder", {"name": "image_encoder", "path": str(tmp_path)})


def test_grounded_segmenter_that_is_no_sam_is_refused_naming_the_folder(owlvit):
    with pytest.raises(ValueError, match=f"grounded segmenter: {owlvit} holds a 'owlvit' model"):
        build("element_detector", {"name": "grounded", "detector": owlvit, "segmenter": owlvit})


# ---- dlib faces ----


def needs_dlib():
    pytest.importorskip("dlib", reason="optional face wheels absent: pip install dlib-bin face_recognition_models")
    if importlib.util.find_spec("face_recognition_models") is None:  # located on disk, never imported
        pytest.skip("optional face_recognition_models absent: pip install face_recognition_models")


def lfw_face(index: int, scale: int = 6) -> np.ndarray:
    """Face ``index`` of scikit-image's LFW subset (25 px grey crops of different people), upscaled, RGB uint8."""
    grey = np.round(skdata.lfw_subset()[index] * 255).astype(np.uint8).repeat(scale, 0).repeat(scale, 1)
    return np.ascontiguousarray(np.stack([grey] * 3, axis=-1))


def test_dlib_face_detector_boxes_a_face_and_nothing_in_a_flat_image():
    needs_dlib()
    detector = build("face_detector", "dlib")
    assert isinstance(detector, FaceDetector)
    framed = np.full((200, 260, 3), 128, np.uint8)
    framed[25:175, 60:210] = lfw_face(0)
    boxes = detector.detect(framed)
    assert len(boxes) == 1
    x0, y0, x1, y1 = boxes[0]
    assert 60 <= x0 < x1 <= 210 and 25 <= y0 < y1 <= 175 and (x1 - x0) > 40
    assert detector.detect(np.full((120, 160, 3), 128, np.uint8)) == []


def test_dlib_face_embeddings_same_person_closer_than_strangers():
    needs_dlib()
    embedder = build("element_embedder", "dlib_face")
    faces = [lfw_face(i) for i in range(4)]
    mirrors = [np.ascontiguousarray(face[:, ::-1]) for face in faces]
    vectors = embedder.embed(faces + mirrors)
    assert vectors.dtype == np.float32 and vectors.shape == (8, 128)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors[:4] @ vectors[4:].T  # face i vs the mirror of face j
    assert (np.diag(similarity) > similarity.max(axis=1, where=~np.eye(4, dtype=bool), initial=-1)).all()
    assert embedder.embed([]).shape == (0, 128)
