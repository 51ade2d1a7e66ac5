"""Shot detection (registry kind ``shot_detector``): PySceneDetect's detectors fed frames decoded by PyAV.

Frames are decoded once, streamed (never held), downscaled to ``analysis_side`` for the detector. Shots are
``[(first_frame, end_frame)]`` in native frame indices (end exclusive), in decode order, so cutting is frame-exact.
"""

from __future__ import annotations

from typing import Iterator

import av
import cv2
import numpy as np

from e2v.datamodules.video_io import VideoDecodeError, upright
from e2v.registry import register


def iter_frames(path: str, max_side: int | None = None) -> Iterator[np.ndarray]:
    """Every frame of ``path`` in decode order as ``uint8 [H, W, 3]`` RGB (upright, see ``upright``), downscaled so its longest side is at
    most ``max_side``; VideoDecodeError when the file is corrupt or truncated."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                image = upright(frame)
                side = max(image.shape[:2])
                if max_side and side > max_side:
                    scale = max_side / side
                    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
                    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
                yield image
    except (av.error.FFmpegError, IndexError, OSError) as err:
        raise VideoDecodeError(f"{path}: corrupt or truncated video ({err})") from err


class SceneDetectShots:
    """Runs a PySceneDetect detector over a video's frames and turns its cuts into shots."""

    def __init__(self, make_detector, analysis_side: int = 256) -> None:
        self.make_detector = make_detector
        self.analysis_side = analysis_side

    def detect(self, path: str) -> list[tuple[int, int]]:
        detector = self.make_detector()
        cuts: list[int] = []
        count = 0
        for count, image in enumerate(iter_frames(path, self.analysis_side), start=1):
            cuts += detector.process_frame(count - 1, np.ascontiguousarray(image[..., ::-1]))  # detectors want BGR
        cuts += detector.post_process(count - 1) if count else []
        bounds = [0, *sorted({c for c in cuts if 0 < c < count}), count]
        return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


@register("shot_detector", "content")
def content_shots(threshold: float = 27.0, min_scene_len: int = 15, analysis_side: int = 256) -> SceneDetectShots:
    """PySceneDetect's ContentDetector (HSV change between consecutive frames; hard cuts)."""
    from scenedetect import ContentDetector

    return SceneDetectShots(lambda: ContentDetector(threshold=threshold, min_scene_len=min_scene_len), analysis_side)


@register("shot_detector", "adaptive")
def adaptive_shots(adaptive_threshold: float = 3.0, min_scene_len: int = 15, window_width: int = 2,
                   min_content_val: float = 15.0, analysis_side: int = 256) -> SceneDetectShots:
    """PySceneDetect's AdaptiveDetector (content change relative to its neighbours; robust to fast camera motion)."""
    from scenedetect import AdaptiveDetector

    return SceneDetectShots(lambda: AdaptiveDetector(adaptive_threshold=adaptive_threshold, min_scene_len=min_scene_len,
                                                     window_width=window_width, min_content_val=min_content_val),
                            analysis_side)
