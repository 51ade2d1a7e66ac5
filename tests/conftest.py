"""Fixtures shared by the test modules."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

# the main job's synthetic world (recipes/tiny/run.sh's `e2v data synth` settings)
TINY_WORLD = dict(frames=17, height=32, width=32, background_ref_prob=1.0, progress=False)


@pytest.fixture
def tiny_world() -> Callable[..., dict]:
    """``tiny_world(out, num_clips, num_heldout)`` writes the main job's synthetic world (run.sh's settings, fewer
    clips) to ``out`` and returns ``synthesize_world``'s result (``train`` / ``heldout`` manifest paths)."""
    from e2v.synth import synthesize_world

    def make(out: str | Path, num_clips: int, num_heldout: int) -> dict:
        return synthesize_world(out, num_clips=num_clips, num_heldout=num_heldout, **TINY_WORLD)

    return make
