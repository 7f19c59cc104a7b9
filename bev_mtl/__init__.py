"""bev-mtl: camera-only multi-view BEV multi-task perception."""

__version__ = "0.1.0"
