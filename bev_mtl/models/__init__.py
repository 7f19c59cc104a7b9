"""Model building blocks: image encoder, view transform, BEV encoder, heads."""
from .image_encoder import ImageEncoder  # noqa: F401
from .view_transform import BEVGrid, BEVPool, DepthBins, LiftSplat, depth_loss  # noqa: F401
