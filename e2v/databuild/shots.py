"""Shot detection (registry kind ``shot_detector``): ``cuts`` (luma-aware change, histogram and motion-discontinuity
tests) and PySceneDetect's detectors, fed frames decoded by PyAV.

Frames are decoded once, streamed (never held), downscaled to ``analysis_side`` for the detector. Shots are
``[(first_frame, end_frame)]`` in native frame indices (end exclusive), in decode order, so cutting is frame-exact.
The frames of a gradual transition (a dissolve, a fade) belong to no shot: no clip shows two pictures blended; the
cut is the middle of that gap (:func:`cut_positions`), which reaches as far after it as the blended frames found
start before it (the blend test sees the first half of a transition best).
"""

from __future__ import annotations

from collections import deque
from typing import Iterator

import av
import cv2
import numpy as np

from e2v.databuild.camera import phase_shift, translate
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


def cut_positions(shots: list[tuple[int, int]]) -> list[int]:
    """The frame each shot after the first starts at, or for shots apart (a gradual transition between them) the
    middle of the frames between them."""
    return [(end + start + 1) // 2 if start > end else start for (_, end), (start, _) in zip(shots, shots[1:])]


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


def _translation(onto: np.ndarray, x: np.ndarray, window: np.ndarray) -> np.ndarray:
    """``(dx, dy)``: the camera's translation of ``x``'s content against ``onto``'s (``float32 [h, w, 3]``; phase
    correlation of luma), at most a quarter of the frame each way."""
    reach = np.array(x.shape[1::-1]) / 4
    return np.clip(phase_shift(cv2.cvtColor(onto, cv2.COLOR_RGB2GRAY), cv2.cvtColor(x, cv2.COLOR_RGB2GRAY), window),
                   -reach, reach)


def _differences(a: np.ndarray, b: np.ndarray, window: np.ndarray,
                 shift: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel absolute colour changes ``[h, w, 3]`` from ``float32 [h, w, 3]`` ``a`` to ``b``: as they are, and
    ``[h', w', 3]`` once ``b`` is moved back by the camera's translation between them (``shift``, found when not
    given; a hand-held camera's shake is no change), over the pixels both show. Each measure takes the smaller of
    the two."""
    shift = _translation(a, b, window) if shift is None else shift
    back = translate(b, -shift)
    bx, by = (int(abs(v)) + 1 for v in shift)
    return np.abs(b - a), np.abs(back - a)[by:-by, bx:-bx]


def _level(difference: np.ndarray) -> float:
    """The largest of the RGB channels' mean changes (so a change between two grey pictures counts in full)."""
    return float(difference.mean(axis=(0, 1)).max())


def _local(difference: np.ndarray, share: float = 0.04, border: float = 0.125) -> float:
    """The mean of the ``share`` of pixels that changed most (largest channel each), ``border`` of the frame's
    height and width off each edge left out: a subject that jumps moves a few percent of the frame a lot, which the
    whole frame's mean hardly sees; one that enters or leaves the picture does so at its edge."""
    h, w = difference.shape[:2]
    dy, dx = int(border * h), int(border * w)
    values = difference[dy: h - dy, dx: w - dx].max(axis=2).ravel()
    top = max(1, int(share * values.size))
    return float(np.partition(values, -top)[-top:].mean())


def _change(a: np.ndarray, b: np.ndarray, window: np.ndarray, shift: np.ndarray | None = None) -> float:
    """Mean colour change from ``float32 [h, w, 3]`` ``a`` to ``b``: the smaller :func:`_level` of
    :func:`_differences`."""
    return min(map(_level, _differences(a, b, window, shift)))


def _aligned(a: np.ndarray, m: np.ndarray, window: np.ndarray) -> np.ndarray:
    """``a`` moved onto ``m`` by the camera's translation between them (a hand-held camera)."""
    return translate(a, -_translation(m, a, window))


def _blend_fit(a: np.ndarray, m: np.ndarray, b: np.ndarray, window: np.ndarray) -> tuple[float, float, float, float]:
    """How well ``m`` is a blend of ``a`` and ``b`` (frames a few steps before and after it, ``float32 [h, w, 3]``),
    as they are or each moved onto ``m`` (the camera's translation), the better: ``(change, fit, correlation, t)``: the colour change
    from ``a`` to ``b`` (:func:`_change`, translation taken out, so a pan or shake changes little); the residual of
    the best blend ``(1 - t) a + t b`` (``t`` by least squares, 0..1) over the smaller of ``m``'s differences from
    ``a`` and from ``b`` (largest RGB channel means; small: the blend explains ``m`` far better than either end,
    as inside a dissolve; about 1 next to a hard cut or for motion); the correlation of ``a``'s and ``b``'s luma, as
    they are or ``b`` moved onto ``a``, the larger (near 1: one picture, brighter, darker or shaken: a striped
    background shaken by half a stripe anticorrelates as it is; 0 when either is flat, as a black frame); and ``t``."""
    shift = _translation(a, b, window)  # the camera's, from a to b: for the change and the correlation
    change = _change(a, b, window, shift)
    fits = []
    for x, y in ((a, b), (_aligned(a, m, window), _aligned(b, m, window))):  # as they are, and moved onto m
        d = (y - x).ravel()
        t = float(np.clip(np.dot((m - x).ravel(), d) / max(float(np.dot(d, d)), 1e-6), 0, 1))
        residual = float(np.abs(m - (x + t * (y - x))).mean(axis=(0, 1)).max())
        ends = min(float(np.abs(m - e).mean(axis=(0, 1)).max()) for e in (x, y))
        fits.append((residual / max(ends, 1.0), t))
    fit, t = min(fits)
    return change, fit, max(_correlation(a, b), _correlation(a, translate(b, -shift))), t


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """The correlation of ``a``'s and ``b``'s luma (``float32 [h, w, 3]``); 0 when either is flat."""
    ya, yb = (cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).ravel() for x in (a, b))
    sa, sb = float(ya.std()), float(yb.std())
    return float(np.mean((ya - ya.mean()) * (yb - yb.mean())) / (sa * sb)) if min(sa, sb) > 2 else 0.0


def _signals(path: str, side: int, span: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Per frame ``f`` (0 for the first), ``float [N, 6]``: the colour change from frame ``f - 1`` (:func:`_change`),
    the luma-histogram distance (half the L1 distance of 32-bin histograms, 0..1) from ``f - 1``, the colour change
    from ``f - 1`` to ``f + 1`` (a flash frame changes a lot from both neighbours, which are alike; 0 for the first
    and last frames), the local change from ``f - 1`` (:func:`_local`; the camera's shake taken out when the moved
    picture keeps three quarters of the frame, a move of up to a sixteenth of each side: farther is a subject's jump,
    which the phase correlation found), that change as the frames are (no shake taken out) and the luma-histogram
    distance from ``f - 1`` to ``f + 1`` (0 for the first and last frames); ``float [N, 4]`` :func:`_blend_fit` of
    frame ``f`` between frames ``f - span`` and ``f + span`` (zeros where those are outside the video). ``[0, 6]``
    and ``[0, 4]`` for a video without frames."""
    change, histogram, bridge, local, raw_local, bridge_histogram, blend = [0.0], [0.0], [0.0], [0.0], [0.0], [0.0], []
    frames: deque[np.ndarray] = deque(maxlen=2 * span)
    hists: deque[np.ndarray] = deque(maxlen=2)
    window = None
    for image in iter_frames(path, side):
        frame = image.astype(np.float32)
        window = cv2.createHanningWindow(image.shape[1::-1], cv2.CV_32F) if window is None else window
        hist = np.histogram(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), 32, (0, 256))[0] / (image.shape[0] * image.shape[1])
        if frames:
            differences = _differences(frames[-1], frame, window)
            change.append(min(map(_level, differences)))
            locals_ = [_local(d) for d in differences[: 2 if differences[1].size > 0.75 * frame.size else 1]]
            local.append(min(locals_))
            raw_local.append(locals_[0])
            histogram.append(0.5 * float(np.abs(hist - hists[-1]).sum()))
        if len(frames) >= 2:
            bridge.append(_change(frames[-2], frame, window))
            bridge_histogram.append(0.5 * float(np.abs(hist - hists[0]).sum()))
        if len(frames) == 2 * span:
            blend.append(_blend_fit(frames[0], frames[span], frame, window))
        frames.append(frame)
        hists.append(hist)
    if not frames:
        return np.zeros((0, 6)), np.zeros((0, 4))
    signals = np.array([change, histogram, (bridge + [0.0])[: len(change)], local, raw_local,
                        (bridge_histogram + [0.0])[: len(change)]]).T
    fits = np.zeros((len(signals), 4))
    if blend:
        fits[span: span + len(blend)] = blend
    return signals, fits


@register("shot_detector", "cuts")
class CutDetector:
    """Hard cuts, frame-exact, on frames at ``analysis_side`` px. A frame starts a shot when its luma histogram moved
    by at least ``histogram`` (0..1) from the previous frame's, or its colour change from it (largest RGB channel
    mean, 0..255, the camera's shake taken out: :func:`_change`) is at least ``threshold`` and twice the median
    changes of the ``window`` frames before it and of those after it, or the change is at least ``min_change``, stands
    out ``ratio`` times over those medians and twice over each neighbour's (a cut inside one location: the background
    stays, the subjects jump; in the local change of the ``4%`` of pixels that changed most, that change also no
    smaller than its neighbours' with the frames as they are, no shake taken out, and twice, not ``ratio`` times,
    the median after it: a cut into a hand-held shot, whose shake stays in the local change); but not into or out
    of a flash: when the frames either side of it, or of the frame before it, differ by under half its change and
    under twice ``threshold`` (the same picture either side of the flash, fast subjects moved). One frame unlike
    both its neighbours, which are more alike (a flash frame), starts no shot: it stays with the shot it ends, and
    the frame after it starts one when the frames either side of the flash differ (luma histograms by
    ``histogram``, or colours by twice ``threshold``, as for a flash above: a shot that ends on a flash and cuts to
    another picture; a flashing shot's fast subjects move its colours by more than ``threshold`` across a flash).
    A cut within ``min_scene_len`` frames after another is not taken (the video's start is no cut: a black frame or
    a title card before the first picture is a shot of its own). The medians and neighbours these tests compare a
    frame with leave out held frames (:meth:`held_frames`: a picture repeated, as in footage shown above its frame
    rate or animation drawn on twos).

    Gradual transitions (dissolves, fades to or from black) are cut at their middle, the first frame of their run
    that is at least half the incoming picture, and no hard cut is taken within ``2 span`` frames of that middle (a
    dissolve between two pictures moves the histogram and colours a lot from frame to frame); inside the run each frame is a blend ``(1 - t) a + t b`` of the frames ``span`` before and after it (:func:`_blend_fit`), ``t``
    between ``0.2`` and ``0.8`` (not one of them: that is a hard cut or no change), the blend's residual under
    ``blend_fit`` of the frame's difference from the nearer of ``a`` and ``b`` (the blend explains it several times
    better than either end), a total change from ``a`` to ``b`` of at least ``gradual_change`` with the camera's
    translation taken out (a pan or shake is no change; half the hard cut's ``threshold``: the blend is the
    evidence here, a hard cut has none), between two different pictures (luma correlation under
    ``max_correlation``: one picture brightening or darkening is exposure, not a transition). Camera motion and
    moving subjects fit no blend that well: a blend of two shifted pictures shows the moving edges twice at half
    strength where the middle frame shows them once, a residual about half the difference from either end."""

    def __init__(self, threshold: float = 20.0, histogram: float = 0.35, ratio: float = 4.0, min_change: float = 4.0,
                 window: int = 8, min_scene_len: int = 12, analysis_side: int = 128, span: int = 4,
                 blend_fit: float = 0.35, gradual_change: float = 10.0, max_correlation: float = 0.8,
                 min_local: float = 24.0) -> None:
        self.threshold, self.histogram, self.ratio, self.min_change = threshold, histogram, ratio, min_change
        self.min_local = min_local
        self.window, self.min_scene_len, self.analysis_side = window, min_scene_len, analysis_side
        self.span, self.blend_fit, self.gradual_change = span, blend_fit, gradual_change
        self.max_correlation = max_correlation

    def gradual_runs(self, blend: np.ndarray) -> list[tuple[int, int, int]]:
        """``(first, end, cut)`` per run of frames inside a gradual transition (``_signals``' blend fits; frames
        at most 2 apart are one run: a blend test fails now and then mid-transition), widened by a frame each way
        (end exclusive): ``cut`` is the frame that starts the next shot, the run's first whose blend
        is at least half the incoming picture (its middle if none is)."""
        change, fit, correlation, t = blend.T if len(blend) else np.zeros((4, 0))
        inside = ((change >= self.gradual_change) & (fit <= self.blend_fit)
                  & (correlation < self.max_correlation) & (t >= 0.2) & (t <= 0.8))
        frames = np.flatnonzero(inside)
        runs = []
        for run in np.split(frames, np.flatnonzero(np.diff(frames) > 2) + 1) if len(frames) else []:
            over = [g for g in run if t[g] >= 0.5]  # where the incoming picture dominates
            runs.append((max(0, int(run[0]) - 1), min(len(inside), int(run[-1]) + 2),
                         int(over[0]) if over else (int(run[0]) + int(run[-1]) + 1) // 2))
        return runs

    def held_frames(self, change: np.ndarray, raw_local: np.ndarray) -> np.ndarray:
        """``bool [N]``: frames that repeat the one before (footage at a lower frame rate, animation drawn on twos
        or threes): almost no change (under ``1``), and a local change under a tenth of a neighbour's. Their
        near-zero changes would make every moving frame between them stand out as a cut; the tests below compare a
        frame with the frames around it that are not holds."""
        neighbours = np.maximum(np.r_[0.0, raw_local[:-1]], np.r_[raw_local[1:], 0.0])
        return (change < 1.0) & (raw_local < 0.1 * neighbours)

    def _around(self, f: int, moving: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ``window`` frames of ``moving`` (sorted frame indices, no holds, frame 0 left out) before ``f`` and
        those after it."""
        i = int(np.searchsorted(moving, f))
        j = i + 1 if i < len(moving) and moving[i] == f else i
        return moving[max(0, i - self.window): i], moving[j: j + self.window]

    def _stands_out(self, values: np.ndarray, f: int, moving: np.ndarray, ratio: float,
                    after: float | None = None) -> bool:
        """Whether ``values[f]`` is ``ratio`` times over the median of the ``window`` values before it and
        ``after`` times (default ``ratio``) over that of those after it (not the start or end of a faster stretch,
        nor part of a shaking camera's); holds left out (``moving``: :meth:`_around`)."""
        before, later = self._around(f, moving)
        sides = [(values[before], ratio), (values[later], after or ratio)]
        return all(values[f] >= times * max(float(np.median(side)), 0.5) for side, times in sides if len(side))

    def _neighbours(self, f: int, moving: np.ndarray) -> list[int]:
        """The nearest frames before and after ``f`` that are not holds (``moving``), where there are."""
        before, later = self._around(f, moving)
        return [int(g) for g in (*before[-1:], *later[:1])]

    def _spike(self, values: np.ndarray, f: int, moving: np.ndarray) -> bool:
        """Whether ``values[f]`` is twice each of its neighbours' (one frame's jump, not a burst of fast motion)."""
        return all(values[f] >= 2 * values[g] for g in self._neighbours(f, moving))

    def _no_less(self, values: np.ndarray, f: int, moving: np.ndarray) -> bool:
        """Whether ``values[f]`` is at least each of its neighbours' (a jump adds change to the frames as they are;
        where the phase correlation followed a subject across a flat background, the frames before had their change
        taken out and the frame where it let go looked like a jump: a face leaving the picture)."""
        return all(values[f] >= values[g] for g in self._neighbours(f, moving))

    def cut_frames(self, signals: np.ndarray, runs: list[tuple[int, int, int]] = ()) -> list[int]:
        """Frames that start a shot (sorted, without 0), from the per-frame signals ``[N, 6]`` of ``_signals`` and
        the gradual transitions :meth:`gradual_runs` found in them."""
        change, histogram, bridge, local, raw_local, bridge_histogram = signals.T
        cuts, last = [], -self.min_scene_len
        gradual = {cut for _, _, cut in runs}
        near_gradual = {g for f in gradual for g in range(f - 2 * self.span, f + 2 * self.span + 1)}
        moving = np.flatnonzero(~self.held_frames(change, raw_local))
        moving = moving[moving >= 1]

        def lone(g: int) -> bool:  # frame g unlike both neighbours, which are more alike: one flash frame
            return 1 <= g < len(change) - 1 and min(change[g], change[g + 1]) >= self.threshold \
                and bridge[g] < min(change[g], change[g + 1])

        for f in range(1, len(change) - 1):  # the last frame starts none: no frame after it tells a cut from a flash
            if f in gradual:
                starts = True
            elif lone(f) or f in near_gradual:
                starts = False
            elif lone(f - 1):  # the frames either side of the flash before it tell whether the picture changed
                starts = bridge_histogram[f - 1] >= self.histogram or bridge[f - 1] >= 2 * self.threshold
            else:
                spans = [bridge[g] for g in (f, f - 1) if 1 <= g < len(change) - 1]  # over the frame, or the one before
                flash = bool(spans) and min(spans) < min(change[f] / 2, 2 * self.threshold)
                starts = not flash and (
                    histogram[f] >= self.histogram
                    or (change[f] >= self.threshold and self._stands_out(change, f, moving, 2.0))
                    or (change[f] >= self.min_change and self._stands_out(change, f, moving, self.ratio)
                        and self._spike(change, f, moving))
                    or (local[f] >= self.min_local and self._stands_out(local, f, moving, self.ratio, after=2.0)
                        and self._spike(local, f, moving) and self._no_less(raw_local, f, moving)))
            if starts:
                if f - last >= self.min_scene_len:  # a short last shot stays one (rejected too short, not joined)
                    cuts.append(f)
                    last = f
        return cuts

    def detect(self, path: str) -> list[tuple[int, int]]:
        signals, blend = _signals(path, self.analysis_side, self.span)
        found = self.gradual_runs(blend)
        runs = {cut: (first, end) for first, end, cut in found}
        cuts = self.cut_frames(signals, found)
        starts = [0] + [max(cut, runs[cut][1], 2 * cut - runs[cut][0]) if cut in runs else cut for cut in cuts]
        ends = [min(cut, runs[cut][0]) if cut in runs else cut for cut in cuts] + [len(signals)]
        return [(a, b) for a, b in zip(starts, ends) if b > a]
