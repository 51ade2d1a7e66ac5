"""e2v: a Lightning-based training framework for elements-to-video (E2V) diffusion (SkyReels-A2)."""

__version__ = "0.1.0"
