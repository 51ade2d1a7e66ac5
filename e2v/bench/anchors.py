"""Published A2-Bench values (SkyReels-A2 paper, arXiv 2504.02436, Table 1) by e2v scorer name: the anchors a score
is read against. The paper's metrics ran on learned models (face recognition, CLIP, MUSIQ, LAION aesthetics, AMT)
that e2v's scorers stand in for where those weights are missing (see each scorer's ``model``): read e2v's numbers
beside these for the direction and rough level, not as digit-for-digit equals.
"""

from __future__ import annotations

ANCHOR_SOURCE = "A2-Bench, SkyReels-A2 paper Table 1"
ANCHOR_MODELS = ("Pika2.1", "Vidu2.1", "Kling1.6", "SkyReels-A2")
ANCHORS: dict[str, tuple[float, float, float, float]] = {  # values in ANCHOR_MODELS order
    "id_consistency": (0.388, 0.455, 0.497, 0.398),
    "object_consistency": (0.788, 0.796, 0.790, 0.809),
    "background_consistency": (0.733, 0.727, 0.700, 0.677),
    "image_quality": (0.548, 0.565, 0.587, 0.683),
    "aesthetic": (0.628, 0.616, 0.609, 0.579),
    "motion_smoothness": (0.917, 0.960, 0.879, 0.891),
    "dynamic_degree": (0.918, 0.878, 1.000, 1.000),
    "text_similarity": (29.13, 28.93, 27.50, 28.19),
}


def anchors_of(metric: str) -> dict[str, float]:
    """``{model: value}`` of the published anchors for ``metric`` ({} where the paper has none)."""
    return dict(zip(ANCHOR_MODELS, ANCHORS.get(metric, ())))
