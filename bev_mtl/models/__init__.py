"""Model building blocks: image encoder, view transform, BEV encoder, heads."""
from .image_encoder import ImageEncoder  # noqa: F401
