"""Bench scorers on constructed videos with known answers (uint8 arrays, no mp4 round trip)."""

import importlib.util
import numpy as np
import pytest
import torch
from skimage import data as skdata

from e2v import registry
from e2v.bench.consistency import IdConsistency, ObjectConsistency
from e2v.bench.embedders import ColourHistogram, TransformersEmbedder
from e2v.bench.report import build_report
from e2v.bench.scorer import Sample
from e2v.bench.scorers import build_scorers

GREY = (128, 128, 128)


def resized(image: np.ndarray, size: int) -> np.ndarray:
    import cv2

    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def elements():
    """Two real elements (scikit-image's cat and coffee cup), 16 px squares."""
    return {"cat": resized(skdata.chelsea(), 16), "coffee": resized(skdata.coffee(), 16)}


def pasted_video(element: np.ndarray, positions, height: int = 32, width: int = 48, background=GREY) -> np.ndarray:
    """``element`` pasted at x = each position (vertically centred) over a still background: ``uint8 [F, H, W, 3]``."""
    video = np.empty((len(positions), height, width, 3), np.uint8)
    video[:] = background
    h, w = element.shape[:2]
    top = (height - h) // 2
    for frame, x in zip(video, positions):
        frame[top : top + h, x : x + w] = element
    return video


def sample(frames, references=(), truth=None, prompt="") -> Sample:
    return Sample("case", prompt, frames, list(references), truth)


def steady(frames=9, step=2):
    return [2 + step * f for f in range(frames)]


def build(name, **options):
    build_scorers([])  # registers e2v's scorers
    return registry.build("scorer", {"name": name, **options})


def test_every_scorer_declares_its_contract():
    for scorer in build_scorers(None, warn=lambda message: None):
        info = scorer.info()
        assert set(info) == {"version", "range", "higher_is_better", "model"}
        assert isinstance(info["higher_is_better"], bool) and info["model"] and len(info["range"]) == 2


def test_dynamic_degree_static_is_zero_moving_is_one(elements):
    dynamic = build("dynamic_degree")
    assert dynamic(sample(pasted_video(elements["cat"], [8] * 9))) == 0.0
    assert dynamic(sample(pasted_video(elements["cat"], steady()))) == 1.0
    half = [2 + 2 * (f // 2) * 2 for f in range(9)]  # moves every other frame: every other pair is still
    assert dynamic(sample(pasted_video(elements["cat"], half))) == pytest.approx(0.5)
    amplitude = build("motion_amplitude")
    assert amplitude(sample(pasted_video(elements["cat"], [8] * 9))) < 0.01
    assert amplitude(sample(pasted_video(elements["cat"], steady()))) > 0.3


def disc_video(positions, size=32, radius=5, colour=(230, 30, 30)) -> np.ndarray:
    """A red disc at x = each position over grey (Farneback tracks a smooth disc well, unlike a 16-px texture)."""
    video = np.empty((len(positions), size, size, 3), np.uint8)
    video[:] = GREY
    y, x = np.mgrid[0:size, 0:size]
    for frame, position in zip(video, positions):
        frame[(y - size // 2) ** 2 + (x - position) ** 2 <= radius**2] = colour
    return video


def test_motion_smoothness_drops_with_duplicated_or_dropped_frames():
    smooth = build("motion_smoothness")
    still = smooth(sample(disc_video([8] * 9)))
    steady_score = smooth(sample(disc_video([6 + f for f in range(9)])))
    duplicated = smooth(sample(disc_video([6 + 2 * (f // 2) for f in range(9)])))
    dropped = smooth(sample(disc_video([6 + f + (3 if f > 4 else 0) for f in range(9)])))
    assert still == pytest.approx(1.0, abs=1e-6)
    assert 0.999 < steady_score < 1.0
    assert duplicated < steady_score - 0.002 and dropped < steady_score - 0.0004


def test_object_consistency_prefers_the_referenced_element(elements):
    objects = build("object_consistency")
    cat_video = pasted_video(elements["cat"], steady())
    coffee_video = pasted_video(elements["coffee"], steady())
    cat_ref, coffee_ref = resized(skdata.chelsea(), 64), resized(skdata.coffee(), 64)
    same = objects(sample(cat_video, [(cat_ref, "animal")]))
    other = objects(sample(cat_video, [(coffee_ref, "object")]))
    assert same > 0.6 and other < same - 0.2
    # shuffling reference assignments over two cases lowers the mean
    matched = np.mean([same, objects(sample(coffee_video, [(coffee_ref, "object")]))])
    shuffled = np.mean([other, objects(sample(coffee_video, [(cat_ref, "animal")]))])
    assert matched > shuffled + 0.2
    assert objects(sample(cat_video, [(cat_ref, "background")])) is None  # no subject reference


def test_background_consistency_compares_the_still_part(elements):
    background = build("background_consistency")
    video = pasted_video(elements["cat"], steady(), background=(40, 160, 60))
    green, purple = np.full((32, 48, 3), (40, 160, 60), np.uint8), np.full((32, 48, 3), (150, 40, 160), np.uint8)
    assert background(sample(video, [(green, "background")])) > 0.95
    assert background(sample(video, [(purple, "background")])) < 0.05


def test_colour_histogram_ignores_the_white_canvas():
    embedder = ColourHistogram()
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 200
    padded = np.full((16, 16, 3), 255, np.uint8)
    padded[4:12, 4:12] = red
    a, b = embedder.embed([red, padded])
    assert torch.allclose(a, b) and a.norm().item() == pytest.approx(1.0)


@pytest.mark.parametrize("family", ["clip", "dinov2"])
def test_transformers_embedder_from_a_local_folder(tmp_path, family, elements):
    import transformers

    torch.manual_seed(0)
    if family == "clip":
        config = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                               num_attention_heads=4, image_size=32, patch_size=8)
        model = transformers.CLIPVisionModel(config)
    else:
        config = transformers.Dinov2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=4, image_size=32, patch_size=8)
        model = transformers.Dinov2Model(config)
    model.save_pretrained(tmp_path)
    embedder = TransformersEmbedder(str(tmp_path))
    assert embedder.range == (-1.0, 1.0) and type(model).__name__ in embedder.label
    scorer = ObjectConsistency(embedder={"name": "transformers", "path": str(tmp_path)}, region="whole")
    ref = resized(skdata.chelsea(), 32)
    # a video whose frames are the reference itself: cosine 1
    assert scorer(sample(np.stack([ref] * 3), [(ref, "object")])) == pytest.approx(1.0, abs=1e-5)
    other = scorer(sample(np.stack([resized(skdata.coffee(), 32)] * 3), [(ref, "object")]))
    assert -1.0 <= other < 0.9999


class ColourFaces:
    """A stand-in face model: a frame has a "face" when it has red pixels; its descriptor is their mean colour."""

    label = "test colour faces"

    def reference(self, image):
        return torch.tensor(image.reshape(-1, 3).mean(0), dtype=torch.float32)

    def faces(self, frame):
        red = frame[..., 0] > 150
        return [torch.tensor(frame[red].mean(0), dtype=torch.float32)] if red.any() else []


def test_id_consistency_counts_frames_without_a_face_as_zero():
    scorer = IdConsistency(face_model=ColourFaces())
    face = np.zeros((4, 4, 3), np.uint8)
    face[..., 0] = 200
    frames = np.zeros((4, 8, 8, 3), np.uint8)
    frames[:2, 2:6, 2:6] = face[0, 0]  # a face in two of four frames
    assert scorer(sample(frames, [(face, "face")])) == pytest.approx(0.5)
    assert scorer(sample(frames, [(face, "object")])) is None


def lfw_face(index: int, size: int = 160) -> np.ndarray:
    """Face ``index`` of scikit-image's bundled LFW subset (25 px grey) as a ``size`` px RGB uint8 image."""
    import cv2

    grey = cv2.resize((skdata.lfw_subset()[index] * 255).astype(np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(np.stack([grey] * 3, axis=-1))


def test_id_consistency_with_dlib_on_lfw_faces():
    """dlib's descriptor: a video of the reference person scores ~1, a video of another LFW person clearly less."""
    pytest.importorskip("dlib")
    if importlib.util.find_spec("face_recognition_models") is None:  # located on disk, never imported
        pytest.skip("face_recognition_models is not installed")
    scorer = build("id_consistency", upsample=1)
    for person, other in ((0, 1), (1, 2), (2, 0)):
        reference = [(lfw_face(person), "face")]
        same = scorer(sample(np.stack([lfw_face(person)] * 3), reference))
        different = scorer(sample(np.stack([lfw_face(other)] * 3), reference))
        assert same > 0.99 and different < 0.95 and same - different > 0.05, (person, other, same, different)


def checkerboard(size=32, cell=4) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    board = (((y // cell) + (x // cell)) % 2 * 180 + 40).astype(np.uint8)
    return np.stack([board] * 3, axis=-1)


def test_image_quality_proxy_blur_and_exposure():
    import cv2

    quality = build("image_quality")
    sharp = np.stack([checkerboard()] * 3)
    blurred = np.stack([cv2.GaussianBlur(checkerboard(), (9, 9), 3)] * 3)
    black = np.zeros_like(sharp)
    q_sharp, q_blur = quality(sample(sharp)), quality(sample(blurred))
    assert q_sharp > 0.5 and q_blur < q_sharp - 0.2
    assert quality(sample(black)) == 0.0


def test_aesthetic_proxy_prefers_colour_and_contrast():
    aesthetic = build("aesthetic")
    colour = np.stack([resized(skdata.astronaut(), 64)] * 2)
    grey = np.full_like(colour, 128)
    assert aesthetic(sample(grey)) == 0.0
    assert aesthetic(sample(colour)) > 0.4


def test_pixel_metrics_need_a_truth_clip(elements):
    video = pasted_video(elements["cat"], steady())
    psnr, flat, match = build("psnr"), build("psnr_flat"), build("subject_match")
    assert psnr(sample(video)) is None and flat(sample(video)) is None
    noisy = np.clip(video.astype(int) + np.random.default_rng(0).integers(-8, 9, video.shape), 0, 255).astype(np.uint8)
    assert 25 < psnr(sample(noisy, truth=video)) < 40
    assert flat(sample(video, truth=video)) < psnr(sample(noisy, truth=video))
    assert psnr(sample(video[::2], truth=video[::2])) > 90  # identical
    ref = resized(skdata.chelsea(), 64)
    assert match(sample(video, [(ref, "animal")])) > match(sample(video, [(resized(skdata.coffee(), 64), "object")]))


def test_report_contract_and_comprehensive():
    scorers = {"dynamic_degree": {"version": "1", "range": [0.0, 1.0], "higher_is_better": True, "model": "m"},
               "psnr": {"version": "1", "range": [0.0, None], "higher_is_better": True, "model": "p"}}
    report = build_report([("a", {"dynamic_degree": 1.0, "psnr": None}), ("b", {"dynamic_degree": 0.5, "psnr": 30.0})],
                          scorers)
    assert set(report) == {"cases", "summary", "scorers"}
    assert [c["id"] for c in report["cases"]] == ["a", "b"]
    assert report["cases"][0]["metrics"] == {"dynamic_degree": 1.0, "psnr": None, "comprehensive": 1.0}
    assert report["summary"] == {"dynamic_degree": 0.75, "psnr": 30.0, "comprehensive": 0.75}
    assert report["scorers"]["comprehensive"]["range"] == [0.0, 1.0]


def tiny_clip_folder(folder):
    """A random 1-layer CLIPModel with a letters-only tokenizer, saved as a local transformers folder."""
    import json

    import transformers

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        vocab.update({c + suffix: len(vocab) for c in "abcdefghijklmnopqrstuvwxyz"})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    transformers.CLIPTokenizer(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt")) \
        .save_pretrained(folder)
    torch.manual_seed(0)
    layers = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(vocab), max_position_embeddings=32, eos_token_id=1, bos_token_id=0,
                         pad_token_id=1, **layers),
        vision_config=dict(image_size=32, patch_size=8, **layers), projection_dim=16)
    transformers.CLIPModel(config).save_pretrained(folder)
    return folder


def test_text_similarity_with_a_local_clip_folder(tmp_path):
    scorer = build("text_similarity", path=str(tiny_clip_folder(tmp_path)))
    assert scorer.info()["range"] == [-100.0, 100.0] and "CLIPModel" in scorer.info()["model"]
    cat, coffee = resized(skdata.chelsea(), 32), resized(skdata.coffee(), 32)
    on_cat = scorer(sample(np.stack([cat] * 2), prompt="a cat"))
    on_coffee = scorer(sample(np.stack([coffee] * 2), prompt="a cat"))
    both = scorer(sample(np.stack([cat, coffee]), prompt="a cat"))
    assert -100 <= on_cat <= 100 and on_cat != pytest.approx(on_coffee)
    assert both == pytest.approx((on_cat + on_coffee) / 2, abs=1e-4)  # the mean over frames
    import transformers

    transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=32,
        patch_size=8)).save_pretrained(tmp_path / "vision")
    with pytest.raises(ValueError, match="text features"):
        build("text_similarity", path=str(tmp_path / "vision"))


def test_the_registry_lists_e2v_scorers():
    names = {entry.name for entry in registry.entries("scorer")}  # through the e2v.plugins entry point
    assert {"dynamic_degree", "motion_smoothness", "object_consistency", "background_consistency", "id_consistency",
            "image_quality", "aesthetic", "text_similarity", "psnr", "subject_match"} <= names
