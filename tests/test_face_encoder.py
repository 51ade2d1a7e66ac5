"""dlib face identity encoder: same person (a face and its mirror) closer than different people; the interface."""

import importlib.util
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("dlib", reason="optional face encoder wheels absent: pip install dlib-bin face_recognition_models")
if importlib.util.find_spec("face_recognition_models") is None:
    pytest.skip("optional face_recognition_models absent: pip install face_recognition_models", allow_module_level=True)

from skimage import data  # noqa: E402

from e2v.modules.face_encoder import FaceEncoder, to_uint8_images  # noqa: E402
from e2v.registry import build  # noqa: E402

FACES = 6


@pytest.fixture(scope="module")
def encoder():
    return build("image_encoder", "dlib_face")


def lfw_faces(count: int, scale: int = 6) -> torch.Tensor:
    """The first ``count`` lfw_subset faces (25 px grey crops of different people) as ``[count, 3, S, S]`` in [-1, 1]."""
    faces = data.lfw_subset()[:count]  # the first 100 of 200 images are faces
    pixels = torch.from_numpy(np.round(faces * 255)).float().repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    return (pixels / 127.5 - 1).unsqueeze(1).expand(-1, 3, -1, -1)


def test_a_face_and_its_mirror_are_closer_than_two_different_people(encoder):
    faces = lfw_faces(FACES)
    descriptors = encoder(torch.stack([faces, faces.flip(-1)], dim=1))  # [FACES, 2 (face, mirror), 128]
    assert descriptors.shape == (FACES, 2, 128) and descriptors.dtype == torch.float32
    same = (descriptors[:, 0] - descriptors[:, 1]).norm(dim=-1)
    different = torch.cdist(descriptors[:, 0], descriptors[:, 0]) + torch.eye(FACES) * 1e9
    assert (same < 0.45).all(), same
    assert (same < different.min(dim=1).values).all(), (same, different.min(dim=1).values)
    cosine = torch.nn.functional.cosine_similarity(descriptors[:, 0], descriptors[:, 1], dim=-1)
    assert (cosine > 0.9).all()


def test_detector_picks_the_face_in_a_photo(encoder):
    astronaut = data.astronaut()  # 512 x 512, Eileen Collins' face around x 175..265, y 76..166
    box = encoder.largest_face(astronaut)
    assert 150 < box.center().x < 290 and 50 < box.center().y < 190
    photo, mirrored = encoder.embed(astronaut), encoder.embed(np.ascontiguousarray(astronaut[:, ::-1]))
    assert (photo - mirrored).norm() < 0.3
    strangers = encoder(lfw_faces(3).unsqueeze(0))[0]
    assert ((strangers - photo).norm(dim=-1) > 0.6).all()


def test_no_face_falls_back_to_the_whole_image(encoder):
    blank = np.full((64, 48, 3), 128, dtype=np.uint8)
    box = encoder.largest_face(blank)
    assert (box.left(), box.top(), box.right(), box.bottom()) == (0, 0, 47, 63)
    assert torch.isfinite(encoder.embed(blank)).all()


def test_interface_and_input_errors(encoder):
    assert isinstance(encoder, FaceEncoder) and encoder.dim == 128 and encoder.tokens_per_image == 1
    images = lfw_faces(2)
    expected = np.round(data.lfw_subset()[0] * 255).astype(np.uint8).repeat(6, 0).repeat(6, 1)
    assert np.array_equal(to_uint8_images(images)[0, ..., 0], expected)  # [-1, 1] -> uint8 round-trips exactly
    with pytest.raises(ValueError, match=r"\[B, N, 3, S, S\]"):
        encoder(images)
    with pytest.raises(ValueError, match="uint8"):
        encoder.embed(np.zeros((32, 32, 3), dtype=np.float32))


def test_missing_dlib_names_the_pip_packages(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)  # makes `import dlib` raise ImportError
    with pytest.raises(ImportError, match="pip install dlib-bin face_recognition_models"):
        FaceEncoder()
