"""Video and image file I/O: PyAV decoding with seeking and an fps stride, atomic mp4/PNG writers.

Decoded videos are ``uint8 [F, H, W, 3]`` RGB tensors, turned upright by the stream's display matrix (a phone
video stores landscape pixels and a rotation); the datamodule converts them to ``[3, F, H, W]`` in [-1, 1].
Every failure to read a file (missing, corrupt, truncated, too short) raises :class:`VideoDecodeError` naming the
file and the reason, so a bad manifest entry can be reported and skipped.
"""

from __future__ import annotations

import os
import warnings
from fractions import Fraction
from pathlib import Path

import av
from av.video.reformatter import VideoReformatter
import numpy as np
import torch
from PIL import Image

from e2v.atomic import atomic_path

# Frames whose timestamp is within this many seconds of a sampling target count as "at" the target.
_TIME_EPS = 1e-4


class VideoDecodeError(RuntimeError):
    """A video that cannot be decoded as asked; the message names the file and the reason."""


def is_file(path: str | os.PathLike) -> bool:
    """``Path.is_file`` that answers False, instead of raising, for a path the system cannot look up at all (a name
    longer than the file system allows, an embedded NUL): such names come from manifests, not from the disk."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def _open(path: str | os.PathLike) -> av.container.InputContainer:
    if not is_file(path):
        raise VideoDecodeError(f"{path}: file not found")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as err:
        raise VideoDecodeError(f"{path}: cannot open as a video ({err})") from err
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(f"{path}: has no video stream")
    return container


def _native_fps(stream: av.video.stream.VideoStream, path: str | os.PathLike) -> float:
    rate = stream.average_rate or stream.base_rate or stream.guessed_rate
    if not rate or rate <= 0:
        raise VideoDecodeError(f"{path}: the video stream has no frame rate")
    return float(rate)


def upright(frame: av.VideoFrame, reformatter: VideoReformatter | None = None) -> np.ndarray:
    """A decoded frame as ``uint8 [H, W, 3]`` RGB, turned as its display matrix says (``frame.rotation``: degrees
    counterclockwise; a portrait phone video reads -90). ``reformatter``: one conversion context reused over a clip."""
    if reformatter is None:
        image = frame.to_ndarray(format="rgb24")
    else:
        image = reformatter.reformat(frame, format="rgb24").to_ndarray()
    turns = round((frame.rotation or 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


def _rotation(path: str | os.PathLike) -> int:
    """The display rotation of the video's first frame: 0, 90, 180 or 270 degrees counterclockwise (0 when no frame
    decodes)."""
    container = _open(path)
    try:
        for frame in container.decode(container.streams.video[0]):
            return round((frame.rotation or 0) / 90) % 4 * 90
        return 0
    finally:
        container.close()


def frame_times(path: str | os.PathLike) -> np.ndarray:
    """Presentation times (seconds, ascending, ``float64 [N]``) of every frame, from the demuxed packets' timestamps
    (no decoding): a variable-frame-rate video is sampled by these, not by its average rate."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        base, fps = stream.time_base, _native_fps(stream, path)
        stamps = [packet.pts if packet.pts is not None else packet.dts for packet in container.demux(stream)
                  if packet.size]
    except av.error.FFmpegError as err:
        raise VideoDecodeError(f"{path}: corrupt or truncated video ({err})") from err
    finally:
        container.close()
    if stamps and None not in stamps and base is not None:
        return np.sort(np.asarray(stamps, np.float64)) * float(base)
    return np.arange(len(stamps), dtype=np.float64) / fps


def probe_video(path: str | os.PathLike) -> dict:
    """Container metadata: ``dict(frames, fps, width, height, duration, rotation)`` (duration in seconds; width and
    height as displayed, i.e. after the ``rotation``, degrees counterclockwise, of the display matrix).

    ``frames`` comes from the stream header when it has one, otherwise from counting the demuxed packets.
    """
    container = _open(path)
    try:
        stream = container.streams.video[0]
        fps = _native_fps(stream, path)
        frames = stream.frames
        if not frames:
            frames = sum(1 for packet in container.demux(stream) if packet.size)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = frames / fps
        width, height = stream.width, stream.height
        rotation = _rotation(path)
        if rotation % 180:
            width, height = height, width
        return dict(frames=int(frames), fps=fps, width=width, height=height, duration=duration, rotation=rotation)
    except av.error.FFmpegError as err:
        raise VideoDecodeError(f"{path}: corrupt video ({err})") from err
    finally:
        container.close()


def read_video(
    path: str | os.PathLike,
    num_frames: int | None,
    fps: float | None = None,
    start: float = 0.0,
    end: float | None = None,
) -> torch.Tensor:
    """Decode ``num_frames`` RGB frames from ``start`` seconds, sampled at ``fps`` (native rate when None).

    Sampling targets are ``start + k / fps``; each takes the first frame at or after it (a target fps above the
    native rate repeats frames). Frames at or after ``end`` seconds are not used. ``num_frames=None`` returns
    every sampled frame of the window.

    Returns ``uint8 [F, H, W, 3]``. Raises VideoDecodeError for missing/corrupt/truncated files and for windows
    with fewer than ``num_frames`` frames.
    """
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1 or None, got {num_frames}")
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if start < 0 or (end is not None and end <= start):
        raise ValueError(f"bad clip window start={start}, end={end} for {path}")
    container = _open(path)
    frames: list[np.ndarray] = []
    try:
        stream = container.streams.video[0]
        native_fps = _native_fps(stream, path)
        step = 1.0 / (fps or native_fps)
        if start > 0 and stream.time_base is not None:
            container.seek(int(start / stream.time_base), stream=stream, backward=True, any_frame=False)
        target = start
        reformatter = VideoReformatter()  # one conversion context for the whole clip (5x faster than per frame)
        for index, frame in enumerate(container.decode(stream)):
            time = frame.time if frame.time is not None else index / native_fps
            if end is not None and time >= end - _TIME_EPS:
                break
            if time < target - _TIME_EPS:
                continue
            image = upright(frame, reformatter)
            while time >= target - _TIME_EPS and (num_frames is None or len(frames) < num_frames):
                frames.append(image)
                target += step
            if num_frames is not None and len(frames) >= num_frames:
                break
    except av.error.FFmpegError as err:
        raise VideoDecodeError(f"{path}: corrupt or truncated video ({err})") from err
    finally:
        container.close()
    wanted = num_frames if num_frames is not None else 1
    if len(frames) < wanted:
        window = f"[{start:g}s, {'end' if end is None else f'{end:g}s'})"
        raise VideoDecodeError(
            f"{path}: too short, got {len(frames)} frame(s) in {window} at {fps or 'native'} fps, "
            f"expected {wanted}"
        )
    return torch.from_numpy(np.stack(frames))


def _to_uint8_frames(video: torch.Tensor | np.ndarray) -> np.ndarray:
    """``[3, F, H, W]`` float in [-1, 1] or ``uint8 [F, H, W, 3]`` -> contiguous ``uint8 [F, H, W, 3]``."""
    if isinstance(video, torch.Tensor):
        if video.dtype == torch.uint8:
            video = video.cpu().numpy()
        else:
            if video.ndim != 4 or video.shape[0] != 3:
                raise ValueError(f"float video must be [3, F, H, W] in [-1, 1], got shape {tuple(video.shape)}")
            video = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            video = video.permute(1, 2, 3, 0).cpu().numpy()
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"video must be uint8 [F, H, W, 3] or float [3, F, H, W], got {video.dtype} {video.shape}")
    return np.ascontiguousarray(video)


def write_video(
    path: str | os.PathLike, video: torch.Tensor | np.ndarray, fps: float, crf: int = 17, threads: int = 0
) -> None:
    """Write an mp4 (h264, yuv420p) atomically: encode to a temp file in the same folder, then ``os.replace``.

    ``video``: ``[3, F, H, W]`` float in [-1, 1] or ``uint8 [F, H, W, 3]``; H and W must be even (yuv420p).
    ``crf``: x264 constant rate factor, 0 = lossless luma/chroma planes (chroma is still 2x subsampled).
    ``threads``: encoder threads, 0 = x264's choice (use 1 for many small encodes in parallel processes).
    x264's macroblock tree is off: with it, output depends on earlier encodes in the same process.
    """
    frames = _to_uint8_frames(video)
    count, height, width, _ = frames.shape
    if count == 0 or height % 2 or width % 2:
        raise ValueError(f"{path}: need >= 1 frame with even height and width for yuv420p, got {frames.shape}")
    if fps <= 0:
        raise ValueError(f"{path}: fps must be > 0, got {fps}")
    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"crf": str(crf), "preset": "veryfast", "x264-params": "no-mbtree=1"}
            stream.codec_context.thread_count = threads
            for image in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(stream.encode())


def save_image(path: str | os.PathLike, image: torch.Tensor | np.ndarray) -> None:
    """Write a PNG atomically. ``image``: ``uint8 [H, W, 3|4]`` or float ``[3, H, W]`` in [-1, 1]."""
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8:
            if image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(f"{path}: float image must be [3, H, W] in [-1, 1], got {tuple(image.shape)}")
            image = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0)
        image = image.cpu().numpy()
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"{path}: image must be uint8 [H, W, 3|4], got {image.dtype} {image.shape}")
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG")


# Greyscale modes with more than 8 bits per pixel, and the value that maps to white.
_WIDE_GREY_WHITE = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL image as ``uint8 [H, W, 3]`` RGB: 16/32-bit greyscale scaled to 8 bits (``I;16``/``I``: 0..65535,
    ``F``: 0..1), transparent pixels composited onto white. Raises ValueError for a mode with no RGB conversion."""
    if img.mode in _WIDE_GREY_WHITE:
        grey = np.nan_to_num(np.asarray(img, dtype=np.float64)) * (255.0 / _WIDE_GREY_WHITE[img.mode])
        return np.repeat(grey.clip(0, 255).round().astype(np.uint8)[..., None], 3, axis=-1)
    if img.mode in ("La", "RGBa"):  # premultiplied alpha
        img = img.convert("RGBA")
    if "A" in img.getbands() or "transparency" in img.info:
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    try:
        return np.asarray(img.convert("RGB")).copy()
    except ValueError as err:
        raise ValueError(f"image mode {img.mode} cannot be converted to RGB ({err})") from err


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image as ``uint8 [H, W, 3]`` RGB (see :func:`pil_to_rgb`). Raises FileNotFoundError, or ValueError
    naming the file for anything undecodable: corrupt, truncated, unsupported, or a decompression bomb (more
    pixels than ``PIL.Image.MAX_IMAGE_PIXELS``)."""
    if not is_file(path):
        raise FileNotFoundError(f"{path}: image file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                array = pil_to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ValueError(f"{path}: image too large, refused as a possible decompression bomb ({err})") from err
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, struct.error, ...) for broken files
        raise ValueError(f"{path}: cannot decode image ({type(err).__name__}: {err})") from err
    return torch.from_numpy(array)
