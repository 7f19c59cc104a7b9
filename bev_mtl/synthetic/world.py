"""Types shared by the synthetic world's generator, sensors and writers.

Frames: everything here lives in the nuScenes *global* frame (metres, z up, ground plane at
z = 0). Boxes follow the devkit's convention: ``center`` is the geometric centre, ``size`` is
(l, w, h) along the box's own x (forward), y (left), z (up), and ``yaw`` rotates the box about
global +z. Ground rasters index rows along +y and columns along +x, like
``NuScenesMap.get_map_mask``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from bev_mtl.structures.vocab import VOCAB


class Material(IntEnum):
    """What the ground is made of at a raster cell (drives colour and LiDAR intensity)."""

    GRASS = 0
    ROAD = 1  # asphalt, inside the drivable area
    SIDEWALK = 2  # walkway layer
    CURB = 3  # raised strip hugging every drivable-area boundary
    LANE_MARK = 4  # dashed white lane divider
    YELLOW_MARK = 5  # solid/double yellow road divider
    CROSSING = 6  # white zebra stripe of a ped crossing
    STOP_LINE = 7  # white stop line
    CARPARK = 8  # car-park surface (also drivable)
    PARKING_LINE = 9  # white bay lines in car parks


# Box kinds the renderer knows how to texture. Vehicle kinds share body-colour palettes on
# purpose: class must be read from shape, size and markings, not colour.
BOX_KINDS = (
    "car", "truck", "bus", "bendy_bus", "trailer", "construction", "ambulance", "police_car",
    "motorcycle", "bicycle", "cyclist", "motorcyclist",
    "pedestrian", "child", "construction_worker", "police_officer", "sitting_pedestrian",
    "traffic_cone", "barrier", "traffic_light", "pole", "building",
)

# the labels the dataset reads back: the model's vocabularies (bev_mtl.structures.vocab)
BLINKER_STATES = VOCAB.blinker
LIGHT_STATES = VOCAB.light


@dataclass
class GroundRaster:
    """Top-down material map of a town. Cell (i, j) covers
    x in [x0 + j*res, x0 + (j+1)*res), y in [y0 + i*res, y0 + (i+1)*res)."""

    materials: np.ndarray  # [H, W] uint8, Material values
    origin: tuple[float, float]  # (x0, y0) of the lower-left corner, global metres
    resolution: float  # metres per cell

    def lookup(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Material at global (x, y); outside the raster is GRASS."""
        j = np.floor((x - self.origin[0]) / self.resolution).astype(np.int64)
        i = np.floor((y - self.origin[1]) / self.resolution).astype(np.int64)
        h, w = self.materials.shape
        inside = (i >= 0) & (i < h) & (j >= 0) & (j < w)
        out = np.full(np.shape(x), Material.GRASS, dtype=np.uint8)
        out[inside] = self.materials[i[inside], j[inside]]
        return out


@dataclass
class BoxPrim:
    """One renderable, ray-castable oriented box in the global frame."""

    center: np.ndarray  # [3] geometric centre
    size: np.ndarray  # [3] (l, w, h)
    yaw: float  # radians about +z; box +x is its front
    kind: str  # one of BOX_KINDS
    color: tuple[int, int, int] = (128, 128, 128)  # base body colour (RGB)
    instance_id: int = -1  # >= 0 for annotated objects; written to the instance image
    blinker: int = 0  # index into BLINKER_STATES (vehicles)
    light_state: int = 3  # index into LIGHT_STATES (traffic_light housings)
    seed: int = 0  # per-object texture variation (window layout, clothes, ...)

    def world_T_box(self) -> np.ndarray:
        """4x4 rigid transform box -> global."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        t = np.eye(4)
        t[:3, :3] = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]
        t[:3, 3] = self.center
        return t


@dataclass
class Lighting:
    """Per-scene look: sun, ambient, colour tint, sky and sensor noise."""

    sun_dir: np.ndarray = field(default_factory=lambda: np.array([0.4, 0.3, 0.87]))  # unit, towards the sun
    ambient: float = 0.45
    sun: float = 0.55
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)  # multiplies RGB
    exposure: float = 1.0
    sky_top: tuple[int, int, int] = (90, 140, 210)
    sky_horizon: tuple[int, int, int] = (190, 210, 230)
    noise_sigma: float = 3.0  # Gaussian pixel noise (0..255 scale)


@dataclass
class CameraRender:
    rgb: np.ndarray  # [H, W, 3] uint8
    depth: np.ndarray  # [H, W] float32, z in the camera frame; inf where sky
    instance: np.ndarray  # [H, W] int32, BoxPrim.instance_id of the surface drawn, -1 otherwise


@dataclass
class LidarConfig:
    """A spinning LiDAR like nuScenes' HDL-32E."""

    n_rings: int = 32
    elevation_deg: tuple[float, float] = (-30.67, 10.67)  # lowest and highest beam
    azimuth_steps: int = 1084  # firings per revolution
    max_range: float = 70.0
    min_range: float = 1.0
    range_noise: float = 0.0  # metres (std); kept 0 by default so labels stay exact


@dataclass
class TrafficLightPost:
    """A traffic light at an intersection approach: pole at ``position`` (ground), housing
    facing ``yaw`` (the direction the light shines, i.e. towards the approaching traffic)."""

    position: tuple[float, float]
    yaw: float
    road_block_index: int  # index into TownLayers.road_blocks of the approach it controls


@dataclass
class TownLayers:
    """Vector map of one town patch in global metres (shapely geometries).

    ``drivable_area`` is the union of roads and car parks; ``curb`` is not a layer of its own:
    it is the boundary of ``drivable_area`` (see docs/synthetic_world.md).
    """

    map_name: str  # one of the four real nuScenes map names
    canvas: tuple[float, float]  # (width, height): the map covers [0, width] x [0, height]
    drivable_area: list  # [Polygon]
    road_segments: list  # [(Polygon, is_intersection: bool)]
    road_blocks: list  # [Polygon] one per road segment direction half
    lanes: list  # [(Polygon, centerline LineString in driving direction)]
    ped_crossings: list  # [Polygon]
    walkways: list  # [Polygon]
    stop_lines: list  # [Polygon]
    carpark_areas: list  # [Polygon]
    road_dividers: list  # [LineString]
    lane_dividers: list  # [LineString]
    traffic_lights: list  # [TrafficLightPost]
