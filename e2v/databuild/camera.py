"""Camera motion as translations: how far each frame's picture has moved against a reference picture, so that a
plate can be made from a panning shot (align, then median) and moving elements found against it.

Shifts are ``float [F, 2]`` ``(dx, dy)`` in pixels: the content at ``(x, y)`` of the reference is at
``(x + dx, y + dy)`` in the frame. Estimated by phase correlation of luma at ``side`` px (window-weighted; at 128 px
chained errors reach a pixel), each step the shift most textured blocks of the picture agree on (:func:`step_shift`),
chained frame to frame so that pans wider than the correlation's reach still line up.
"""

from __future__ import annotations

import cv2
import numpy as np


def _grey(frame: np.ndarray, side: int) -> np.ndarray:
    scale = side / max(frame.shape[:2])
    size = (max(8, round(frame.shape[1] * scale)), max(8, round(frame.shape[0] * scale)))
    return cv2.resize(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), size, interpolation=cv2.INTER_AREA).astype(np.float32)


def phase_shift(a: np.ndarray, b: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Translation of ``b``'s content against ``a``'s (both ``float32 [h, w]``, left as they are)."""
    (dx, dy), _ = cv2.phaseCorrelate(a.copy(), b.copy(), window)  # OpenCV 4.14 windows its inputs in place
    return np.array([dx, dy])


def step_shift(a: np.ndarray, b: np.ndarray, window: np.ndarray, prior: np.ndarray | None = None, grid: int = 4,
               near: float = 1.5) -> np.ndarray:
    """The camera's translation of ``b``'s content against ``a``'s (``float32 [h, w]``). Large subjects moving
    together outweigh a faint background in the whole picture's phase correlation (a cup and a star drifting up
    while the camera pans over grey gravel: the chain followed them); they cover a few of a ``grid`` x ``grid`` of
    blocks only. Candidates: the whole picture's shift and each textured block's; each is supported by the blocks
    within ``near`` px of it; of those with at least three quarters of the best support, the one nearest the
    ``prior`` (the neighbouring step's shift: a camera moves smoothly), else the best supported, the whole
    picture's first. Unless the pick lies within ``near`` px of the whole picture's shift, the shift is the
    supporters' mean refined to a quarter pixel by the mean difference over their blocks (a block's own
    correlation runs a few percent short of a long shift)."""
    whole = phase_shift(a, b, window)
    h, w = a.shape[0] // grid, a.shape[1] // grid
    block_window = cv2.createHanningWindow((w, h), cv2.CV_32F)
    blocks = [(slice(i * h, (i + 1) * h), slice(j * w, (j + 1) * w)) for i in range(grid) for j in range(grid)]
    found = [(block, phase_shift(a[block], b[block], block_window)) for block in blocks
             if min(a[block].std(), b[block].std()) >= 1.0]
    if not found:
        return whole

    def support(shift: np.ndarray) -> int:
        return sum(1 for _, s in found if np.abs(s - shift).max() <= near)

    candidates = [whole, *(s for _, s in found)]
    best = max(map(support, candidates))
    contenders = [c for c in candidates if 4 * support(c) >= 3 * best]
    pick = min(contenders, key=lambda c: np.abs(c - prior).max()) if prior is not None else max(contenders, key=support)
    if np.abs(pick - whole).max() <= near:
        return whole
    agreed = [(block, s) for block, s in found if np.abs(s - pick).max() <= near]
    on = np.zeros(a.shape, bool)
    for block, _ in agreed:
        on[block] = True
    on[: h // 4], on[-(h // 4):], on[:, : w // 4], on[:, -(w // 4):] = False, False, False, False  # moved-in edges

    def cost(shift: np.ndarray) -> float:
        return float(np.abs(translate(b, -shift) - a)[on].mean())

    centre = np.mean([s for _, s in agreed], axis=0)
    for step in (0.5, 0.25):  # the supporters' mean runs a few percent short of a long shift: refined on them
        centre = min((centre + step * np.array([dx, dy]) for dy in (-2, -1, 0, 1, 2) for dx in (-2, -1, 0, 1, 2)),
                     key=cost)
    return centre


def frame_shifts(frames: np.ndarray, reference: int | None = None, side: int = 256) -> np.ndarray:
    """``float [F, 2]`` shifts of ``uint8 [F, H, W, 3]`` frames against frame ``reference`` (default: the middle
    one), in full-resolution pixels (see the module docstring). Each step (:func:`step_shift`) is found outward from
    the reference, the step beside it nearer the reference its prior."""
    reference = len(frames) // 2 if reference is None else reference
    grey = [_grey(f, side) for f in frames]
    window = cv2.createHanningWindow(grey[0].shape[::-1], cv2.CV_32F)
    steps = np.zeros((len(frames), 2))  # steps[i]: frame i against frame i - 1
    for i in range(reference + 1, len(frames)):
        steps[i] = step_shift(grey[i - 1], grey[i], window, steps[i - 1] if i - 1 > reference else None)
    for i in range(reference, 0, -1):
        steps[i] = step_shift(grey[i - 1], grey[i], window, steps[i + 1] if i + 1 < len(frames) else None)
    chained = np.cumsum(steps, axis=0)
    return (chained - chained[reference]) * max(frames.shape[1:3]) / side


def _small(picture: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    scale = min(1.0, side / max(picture.shape[:2]))
    size = (max(8, round(picture.shape[1] * scale)), max(8, round(picture.shape[0] * scale)))
    return cv2.resize(picture, size, interpolation=cv2.INTER_AREA).astype(np.int16), scale


def _edges(picture: np.ndarray, share: float = 0.25) -> np.ndarray:
    """``bool [h, w]``: the ``share`` of ``picture``'s pixels with the strongest luma gradient (where a misplaced
    picture differs; flat regions say nothing about a shift)."""
    grey = cv2.cvtColor(picture.astype(np.uint8), cv2.COLOR_RGB2GRAY).astype(np.float32)
    magnitude = np.abs(cv2.Sobel(grey, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    return magnitude >= max(np.quantile(magnitude, 1 - share), 1e-3)


def _fit_cost(frame: np.ndarray, plate: np.ndarray, edges: np.ndarray, shift: np.ndarray, keep: float = 0.7) -> float:
    """How badly ``plate`` moved by ``shift`` fits ``frame``: the mean of the smallest ``keep`` share of their
    absolute differences over the moved plate's ``edges`` (subjects hiding under ``1 - keep`` of the edges do not
    count; a misplaced edge does, however flat the rest of the picture)."""
    moved = translate(plate, shift, interpolation=cv2.INTER_NEAREST)
    on = translate(edges.astype(np.uint8), shift, cv2.BORDER_CONSTANT, cv2.INTER_NEAREST).astype(bool)
    diff = np.abs(frame - moved)[on].ravel() if on.any() else np.abs(frame - moved).ravel()
    count = max(1, int(keep * diff.size))
    return float(np.partition(diff, count - 1)[:count].mean())


def _best_offsets(frame: np.ndarray, plate: np.ndarray, edges: np.ndarray, centres: list[np.ndarray], radius: int,
                  count: int = 1) -> list[tuple[float, np.ndarray]]:
    """Of the integer shifts within ``radius`` px of each of ``centres``, the ``count`` whose moved ``plate`` (with
    its :func:`_edges` ``edges``) fits ``frame`` best, as ``(cost, shift)`` (:func:`_fit_cost`), best first, each
    over 1 px from the others; on equal fits the earlier centre and the nearer shift."""
    steps = sorted(((dx, dy) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)),
                   key=lambda d: d[0] ** 2 + d[1] ** 2)
    shifts = [np.array(s) for s in dict.fromkeys(tuple(np.round(c) + d) for c in centres for d in steps)]
    costs = [_fit_cost(frame, plate, edges, s) for s in shifts]
    best: list[tuple[float, np.ndarray]] = []
    for n in np.argsort(costs, kind="stable"):
        if all(np.abs(shifts[n] - b).max() > 1 for _, b in best):
            best.append((costs[n], shifts[n]))
        if len(best) == count:
            break
    return best


RECENT_FITS = 3  # fits remembered: a build asks for the same one again (a plate estimated twice, a caption's motion)
_recent_fits: list[tuple] = []  # (plate copied, frames, their fingerprint, reach, side, shifts), the newest first


def _fingerprint(array: np.ndarray) -> int:
    """A hash of ``array``'s values on a grid of about 16 per axis (no copy of the whole): remembered frames changed
    in place since do not match."""
    return hash(array[tuple(slice(None, None, max(1, n // 16)) for n in array.shape)].tobytes())


def fitted_shifts(plate: np.ndarray, frames: np.ndarray, reach: float = 0.25, side: int = 96) -> np.ndarray:
    """``float [F, 2]`` shifts of each frame against ``plate`` (e.g. a shot's plate and a clip cut from it). At
    ``side`` px: the one offset of the middle frame that fits best within ``reach`` of the side; then per frame,
    outward from the middle, the three best fits near no shift, near that offset, near the offset plus the frame's
    own chained shift (:func:`frame_shifts`) and near the fit of the neighbour nearer the middle (a hand-held camera
    moves little a frame, and along stripes the chain slips), each refined at up to 3x ``side``, the best kept. The
    fit is a trimmed mean absolute difference on the plate's edges (:func:`_fit_cost`), so subjects hiding under 30%
    of them do not count, a still camera stays still when drifting subjects pull the chained shifts, and a periodic
    background (checks, bricks) cannot mislead it as it does a phase correlation against the plate. The last
    ``RECENT_FITS`` fits are remembered: asked again for the same frames array, unchanged, and an equal plate (a build
    asks twice for a clip's fit), it answers without fitting."""
    fingerprint = _fingerprint(frames)
    for old_plate, old_frames, old_fingerprint, *settings, shifts in _recent_fits:
        if (old_frames is frames and old_fingerprint == fingerprint and settings == [reach, side]
                and old_plate.shape == plate.shape and np.array_equal(old_plate, plate)):
            return shifts.copy()
    shifts = _fit_shifts(plate, frames, reach, side)
    _recent_fits.insert(0, (plate.copy(), frames, fingerprint, reach, side, shifts))
    del _recent_fits[RECENT_FITS:]
    return shifts.copy()


def _fit_shifts(plate: np.ndarray, frames: np.ndarray, reach: float, side: int) -> np.ndarray:
    """:func:`fitted_shifts` without its memory of recent fits."""
    if not len(frames):
        return np.zeros((0, 2))
    middle = len(frames) // 2
    chain = frame_shifts(frames)
    coarse_plate, coarse = _small(plate, side)
    coarse_edges = _edges(coarse_plate)
    small = [_small(f, side)[0] for f in frames]
    _, offset = _best_offsets(small[middle], coarse_plate, coarse_edges, [np.zeros(2)],
                              max(1, round(reach * max(coarse_plate.shape))))[0]
    fine_plate, fine = _small(plate, 3 * side)
    fine_edges = _edges(fine_plate)
    radius = max(1, round(fine / coarse / 2))
    out = np.zeros((len(frames), 2))
    for i in [*range(middle, len(frames)), *range(middle - 1, -1, -1)]:
        near = [np.zeros(2), offset, offset + np.round(chain[i] * coarse)]
        if i != middle:  # the neighbour nearer the middle, already fitted
            near.append(np.round(out[i - 1 if i > middle else i + 1] * coarse))
        rough = _best_offsets(small[i], coarse_plate, coarse_edges, near, max(1, round(0.03 * side)), count=3)
        detail = _small(frames[i], 3 * side)[0]
        refined = [_best_offsets(detail, fine_plate, fine_edges, [r / coarse * fine], radius)[0] for _, r in rough]
        out[i] = min(refined, key=lambda found: found[0])[1] / fine
    return out


def translate(image: np.ndarray, shift: np.ndarray, border: int = cv2.BORDER_REPLICATE,
              interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """``image`` moved by ``shift`` ``(dx, dy)`` pixels (same size; uncovered pixels by ``border``)."""
    matrix = np.float32([[1, 0, shift[0]], [0, 1, shift[1]]])
    return cv2.warpAffine(image, matrix, image.shape[1::-1], flags=interpolation, borderMode=border)


def is_moving(shifts: np.ndarray, side: int, still: float = 0.01) -> bool:
    """Whether the camera moved: the frames' spread of shifts exceeds ``still`` of the frame side."""
    return bool(np.ptp(shifts, axis=0).max() > still * side) if len(shifts) else False
