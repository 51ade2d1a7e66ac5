import av
import numpy as np
import pytest
import torch

from e2v.datamodules.video_io import VideoDecodeError, load_image, probe_video, read_video, save_image, write_video

LEVELS = np.arange(48) * 5 + 10  # frame i is a flat grey image of level 10 + 5 i


def grey_video(count=48, height=32, width=48):
    return np.stack([np.full((height, width, 3), level, np.uint8) for level in LEVELS[:count]])


def frame_indices(video: torch.Tensor) -> list[int]:
    """Index of the nearest grey level of each decoded frame (h264 in yuv420p is off by a level or so)."""
    means = video.float().mean(dim=(1, 2, 3)).numpy()
    return [int(np.abs(LEVELS - m).argmin()) for m in means]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "grey.mp4"
    write_video(path, grey_video(), fps=24, crf=0)
    return path


def test_probe(clip):
    info = probe_video(clip)
    assert info["frames"] == 48 and info["fps"] == pytest.approx(24)
    assert (info["width"], info["height"]) == (48, 32)
    assert info["duration"] == pytest.approx(2.0, abs=0.05)


def test_read_all_frames_in_order(clip):
    video = read_video(clip, None)
    assert video.dtype == torch.uint8 and video.shape == (48, 32, 48, 3)
    assert frame_indices(video) == list(range(48))
    assert (video.float() - torch.from_numpy(grey_video()).float()).abs().max() <= 2


def test_exact_count_and_fps_stride(clip):
    assert frame_indices(read_video(clip, 9, fps=8)) == list(range(0, 27, 3))
    assert frame_indices(read_video(clip, 5, fps=12)) == [0, 2, 4, 6, 8]


def test_seek_start_and_end(clip):
    assert frame_indices(read_video(clip, 4, fps=8, start=0.5)) == [12, 15, 18, 21]
    assert frame_indices(read_video(clip, None, fps=8, start=0.5, end=1.0)) == [12, 15, 18, 21]
    assert frame_indices(read_video(clip, 3, start=1.5)) == [36, 37, 38]


def test_too_short(clip):
    with pytest.raises(VideoDecodeError, match="too short.*got 16.*expected 17"):
        read_video(clip, 17, fps=8)
    with pytest.raises(VideoDecodeError, match="too short"):
        read_video(clip, 5, fps=8, start=0.5, end=1.0)


def test_missing_file(tmp_path):
    with pytest.raises(VideoDecodeError, match="not found"):
        read_video(tmp_path / "nope.mp4", 4)
    with pytest.raises(VideoDecodeError, match="not found"):
        probe_video(tmp_path / "nope.mp4")


def test_truncated_and_corrupt(clip, tmp_path):
    data = clip.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video" * 100)
    for path in (truncated, garbage):
        with pytest.raises(VideoDecodeError, match=path.name):
            read_video(path, 4)
        with pytest.raises(VideoDecodeError, match=path.name):
            probe_video(path)


def test_float_video_roundtrip(tmp_path):
    video = torch.linspace(-1, 1, 5).view(1, 5, 1, 1).expand(3, 5, 16, 16)
    write_video(tmp_path / "float.mp4", video, fps=8, crf=0)
    decoded = read_video(tmp_path / "float.mp4", 5)
    expected = ((video + 1) * 127.5).round().permute(1, 2, 3, 0)
    assert (decoded.float() - expected).abs().max() <= 3


def test_encoding_is_reproducible(tmp_path):
    """Same frames -> same bytes, whatever was encoded before in this process."""
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (9, 32, 48, 3), dtype=np.uint8)
    video = np.repeat(np.repeat(video[:, ::8, ::8], 8, axis=1), 8, axis=2)[:, :32, :48]
    write_video(tmp_path / "first.mp4", video, fps=8)
    write_video(tmp_path / "other.mp4", rng.integers(0, 256, (9, 64, 64, 3), dtype=np.uint8), fps=8)
    write_video(tmp_path / "second.mp4", video, fps=8)
    assert (tmp_path / "first.mp4").read_bytes() == (tmp_path / "second.mp4").read_bytes()


def test_write_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 15, 16, 3), np.uint8), fps=8)
    with pytest.raises(ValueError, match=r"\[3, F, H, W\]"):
        write_video(tmp_path / "bad.mp4", torch.zeros(2, 3, 16, 16), fps=8)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "clip.mp4"
    write_video(path, grey_video(4), fps=24)
    before = path.read_bytes()
    original = av.VideoFrame.from_ndarray
    converted = []

    def fail_on_third_frame(array, format):
        converted.append(array)
        if len(converted) == 3:
            raise RuntimeError("encoder died")
        return original(array, format=format)

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", staticmethod(fail_on_third_frame))
    with pytest.raises(RuntimeError, match="encoder died"):
        write_video(path, grey_video(8), fps=24)
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]
    assert path.read_bytes() == before


def test_image_roundtrip(tmp_path):
    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:3, :, 3] = 255  # top half opaque red-ish, bottom half transparent
    save_image(tmp_path / "ref.png", rgba)
    image = load_image(tmp_path / "ref.png")
    assert image.shape == (6, 8, 3) and image.dtype == torch.uint8
    assert image[:3].tolist() == [[[200, 0, 0]] * 8] * 3
    assert (image[3:] == 255).all()
    save_image(tmp_path / "float.png", torch.zeros(3, 4, 5))
    assert (load_image(tmp_path / "float.png") == 128).all()
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")
