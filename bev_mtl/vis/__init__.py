"""Pictures of samples, ground truth and predictions (see docs/visualization.md).

``bev_canvas``: the bird's-eye-view panel (map layers, box footprints, ego car, range rings), the
metres -> pixel mapping ``BEVView.ego_to_pixel`` and the legend column. ``camera_mosaic``: the
N-camera mosaic with projected 3D boxes, and ``compose_panels`` putting the BEV beside it. Both take plain numpy
arrays; ``tools/visualize.py`` feeds them from a dataset plus a checkpoint or a results file.
"""
from .bev_canvas import (CLASS_COLOURS, GT_COLOUR, MAP_COLOURS, BEVView, MapLayers, box_footprints, class_colour,
                         legend_panel, render_bev)
from .camera_mosaic import BoxSet, Mosaic, box_corners_3d, camera_mosaic, camera_rows, compose_panels

__all__ = ["BEVView", "MapLayers", "render_bev", "legend_panel", "box_footprints", "class_colour", "GT_COLOUR",
           "MAP_COLOURS", "CLASS_COLOURS", "BoxSet", "Mosaic", "box_corners_3d", "camera_mosaic", "camera_rows",
           "compose_panels"]
