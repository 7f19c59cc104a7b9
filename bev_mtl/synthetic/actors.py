"""Scene scripting: the ego route, traffic, parked cars, pedestrians, construction zones, lights.

Every actor moves with a constant velocity for the whole scene (or stands still), so 2 Hz
keyframes see consistent motion and ``NuScenes.box_velocity`` recovers the true velocity.
Vehicles in one lane share that lane's speed, so they never run into each other; traffic on
crossing roads either waits at the stop line or drives away from the ego's road. Lights are
labels, not rules: traffic does not react to them (documented limitation).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .town import CROSSING_DEPTH, CURB_WIDTH, SIDEWALK_WIDTH, STOP_DEPTH, STOP_GAP, Road, Town
from .world import BoxPrim, Material

# (fine nuScenes category, renderer kind, mean (l, w, h)); sizes follow nuScenes statistics.
CATEGORIES = {
    "car": ("vehicle.car", "car", (4.63, 1.97, 1.74)),
    "truck": ("vehicle.truck", "truck", (6.93, 2.51, 2.84)),
    "bus": ("vehicle.bus.rigid", "bus", (11.2, 2.94, 3.47)),
    "bendy_bus": ("vehicle.bus.bendy", "bendy_bus", (17.5, 2.95, 3.4)),
    "trailer": ("vehicle.trailer", "trailer", (10.5, 2.9, 3.6)),
    "construction": ("vehicle.construction", "construction", (6.4, 2.8, 3.2)),
    "ambulance": ("vehicle.emergency.ambulance", "ambulance", (6.2, 2.3, 2.7)),
    "police_car": ("vehicle.emergency.police", "police_car", (5.0, 2.0, 1.8)),
    "motorcyclist": ("vehicle.motorcycle", "motorcyclist", (2.1, 0.8, 1.6)),
    "motorcycle": ("vehicle.motorcycle", "motorcycle", (2.1, 0.78, 1.2)),
    "cyclist": ("vehicle.bicycle", "cyclist", (1.75, 0.62, 1.7)),
    "bicycle": ("vehicle.bicycle", "bicycle", (1.7, 0.6, 1.05)),
    "adult": ("human.pedestrian.adult", "pedestrian", (0.73, 0.67, 1.77)),
    "child": ("human.pedestrian.child", "child", (0.5, 0.5, 1.3)),
    "worker": ("human.pedestrian.construction_worker", "construction_worker", (0.75, 0.7, 1.8)),
    "police_officer": ("human.pedestrian.police_officer", "police_officer", (0.73, 0.67, 1.78)),
    "sitting": ("human.pedestrian.adult", "sitting_pedestrian", (0.8, 0.7, 1.1)),
    "cone": ("movable_object.trafficcone", "traffic_cone", (0.41, 0.41, 1.07)),
    "barrier": ("movable_object.barrier", "barrier", (2.53, 0.5, 0.98)),
}
BLINKER_VEHICLES = {"car", "truck", "bus", "bendy_bus", "construction", "ambulance", "police_car"}
# Body colours shared by all vehicle classes (class is not readable from colour alone).
VEHICLE_PALETTE = [(200, 200, 205), (30, 30, 35), (150, 20, 25), (25, 55, 140), (110, 115, 120),
                   (235, 235, 230), (60, 90, 60), (180, 150, 40), (90, 60, 40), (200, 90, 20)]
CLOTHES = [(40, 60, 120), (150, 30, 30), (30, 30, 30), (200, 200, 190), (60, 110, 60), (120, 90, 160)]


@dataclass
class Actor:
    instance_id: int
    key: str  # key of CATEGORIES
    size: np.ndarray  # (l, w, h)
    p0: np.ndarray  # xy at t = 0 (box centre)
    velocity: np.ndarray  # xy, m/s
    yaw: float
    attribute: str | None  # nuScenes attribute name, None for cones/barriers
    color: tuple[int, int, int]
    blinker: int = 0
    seed: int = 0

    @property
    def category(self) -> str:
        return CATEGORIES[self.key][0]

    def center(self, t: float) -> np.ndarray:
        xy = self.p0 + self.velocity * t
        return np.array([xy[0], xy[1], self.size[2] / 2.0])

    def prim(self, t: float) -> BoxPrim:
        return BoxPrim(self.center(t), self.size, self.yaw, CATEGORIES[self.key][1], self.color,
                       self.instance_id, self.blinker, seed=self.seed)


@dataclass
class LightState:
    post_index: int  # into town.layers.traffic_lights
    state: int  # index into LIGHT_STATES
    housing: BoxPrim = field(repr=False, default=None)  # type: ignore[assignment]
    pole: BoxPrim = field(repr=False, default=None)  # type: ignore[assignment]


@dataclass
class ScenePlan:
    road_index: int
    direction: int
    ego_p0: np.ndarray  # xy of the ego origin at t = 0
    ego_velocity: np.ndarray
    ego_yaw: float
    actors: list[Actor]
    lights: list[LightState]
    duration: float

    def ego_pose(self, t: float) -> tuple[np.ndarray, float]:
        return self.ego_p0 + self.ego_velocity * t, self.ego_yaw


class _Spawner:
    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.actors: list[Actor] = []

    def add(self, key: str, xy, yaw: float, speed: float, attribute: str | None, color=None, blinker=None) -> Actor:
        rng = self.rng
        size = np.array(CATEGORIES[key][2]) * rng.uniform(0.92, 1.08, 3)
        if color is None:
            color = VEHICLE_PALETTE[int(rng.integers(len(VEHICLE_PALETTE)))] if key in BLINKER_VEHICLES or key in (
                "trailer", "motorcycle", "motorcyclist", "bicycle", "cyclist") else CLOTHES[int(rng.integers(len(CLOTHES)))]
        if blinker is None:
            blinker = int(rng.choice(4, p=[0.4, 0.2, 0.2, 0.2])) if key in BLINKER_VEHICLES else 0
        v = speed * np.array([np.cos(yaw), np.sin(yaw)])
        a = Actor(len(self.actors), key, size, np.asarray(xy, float), v, float(yaw), attribute, color, blinker,
                  int(rng.integers(1 << 30)))
        self.actors.append(a)
        return a


def plan_scene(town: Town, rng: np.random.Generator, duration: float, reach: float = 75.0) -> ScenePlan:
    """Choose an ego route on a random road and populate everything within `reach` of it."""
    size = town.layers.canvas[0]
    ri = int(rng.integers(len(town.roads)))
    road = town.roads[ri]
    direction = int(rng.choice([-1, 1]))
    ego_lane = int(rng.integers(road.lanes))
    ego_speed = 0.0 if rng.random() < 0.15 else float(rng.uniform(4.0, 11.0))
    travel = ego_speed * duration
    margin = 90.0
    s_start = rng.uniform(margin, size - margin - travel) if direction == 1 else rng.uniform(margin + travel, size - margin)
    if ego_speed == 0.0:
        for lo_j, hi_j in _junctions(town, ri):
            if lo_j - 4 < s_start < hi_j + 4:
                s_start = lo_j - 6 if direction == 1 else hi_j + 6
    s_lo, s_hi = min(s_start, s_start + direction * travel) - reach, max(s_start, s_start + direction * travel) + reach
    yaw = road.heading(direction)
    ego_p0 = road.point(s_start, road.lane_offset(direction, ego_lane))
    ego_v = ego_speed * direction * road.u
    sp = _Spawner(rng)

    # Main-road traffic: one speed per lane, vehicles spaced so they never touch.
    for d in (1, -1):
        for k in range(road.lanes):
            is_ego_lane = d == direction and k == ego_lane
            speed = ego_speed if is_ego_lane else (0.0 if rng.random() < 0.15 else float(rng.uniform(3.0, 13.0)))
            _fill_lane(sp, town, road, d, k, s_lo - speed * duration, s_hi + speed * duration, speed,
                       avoid=(s_start, 9.0) if is_ego_lane else None, curb_lane=(k == road.lanes - 1),
                       blocked=_junctions(town, ri) if speed == 0.0 else ())
    # Crossing roads near the route: queues at the stop line and traffic leaving the junction.
    for sc, oi in town.crossings_on(ri):
        if not s_lo - 20 < sc < s_hi + 20:
            continue
        other = town.roads[oi]
        s_road = road.center  # where the crossing road meets ours, in its own arc length
        for d in (1, -1):
            edge = road.half_width + 6.0 + CROSSING_DEPTH + STOP_GAP + STOP_DEPTH
            for k in range(other.lanes):
                # Arriving (heading d towards our road) from the side at s_road - d*edge: queue.
                s = s_road - d * (edge + 1.0)
                for _ in range(int(rng.integers(0, 4))):
                    key = _vehicle_key(rng)
                    l = CATEGORIES[key][2][0]
                    s -= d * l / 2
                    sp.add(key, other.point(s, other.lane_offset(d, k)), other.heading(d), 0.0,
                           _attr(key, 0.0, parked=False))
                    s -= d * (l / 2 + rng.uniform(1.5, 3.5))
                # Leaving: drives away from our road.
                speed = float(rng.uniform(4.0, 11.0))
                _fill_lane(sp, town, other, d, k, s_road + d * (edge + 2.0), s_road + d * 85.0, speed)
        _crossing_pedestrians(sp, town, road, other, sc)
    _sidewalk_life(sp, town, road, s_lo, s_hi)
    _carparks(sp, town, s_lo, s_hi, road)
    # Every scene passes a construction zone on one side and a depot on the other, so that
    # all ten detection classes appear near the ego in every scene (small splits stay complete).
    mid = s_start + direction * travel / 2
    # Works on the ego's right (no oncoming lanes between, so tall traffic hides them less: cones and
    # barriers count only within 30 m in the nuScenes metric), depot across the road.
    side = -direction
    _construction_zone(sp, town, road, mid + rng.uniform(-12, 12), side=side)
    _depot(sp, town, road, mid + rng.uniform(-12, 12), side=-side)
    lights = _lights(town, rng, road, s_lo, s_hi)
    return ScenePlan(ri, direction, ego_p0, ego_v, yaw, sp.actors, lights, duration)


def _vehicle_key(rng: np.random.Generator) -> str:
    keys = ["car", "truck", "bus", "bendy_bus", "ambulance", "police_car", "construction", "motorcyclist"]
    return str(rng.choice(keys, p=[0.58, 0.12, 0.07, 0.04, 0.05, 0.05, 0.03, 0.06]))


def _attr(key: str, speed: float, parked: bool) -> str | None:
    cat = CATEGORIES[key][0]
    if cat.startswith("vehicle.motorcycle") or cat.startswith("vehicle.bicycle"):
        return "cycle.with_rider" if key in ("cyclist", "motorcyclist") else "cycle.without_rider"
    if cat.startswith("vehicle."):
        return "vehicle.moving" if speed > 0.3 else ("vehicle.parked" if parked else "vehicle.stopped")
    if cat.startswith("human."):
        return "pedestrian.sitting_lying_down" if key == "sitting" else (
            "pedestrian.moving" if speed > 0.3 else "pedestrian.standing")
    return None


def _junctions(town: Town, ri: int) -> list[tuple[float, float]]:
    """Arc intervals of road ri covered by junctions, their crossings and stop lines."""
    road = town.roads[ri]
    out = []
    for sc, oi in town.crossings_on(ri):
        h = town.zone_half(road, town.roads[oi]) + CROSSING_DEPTH + STOP_GAP + STOP_DEPTH
        out.append((sc - h, sc + h))
    return out


def _fill_lane(sp: _Spawner, town: Town, road: Road, d: int, k: int, s0: float, s1: float, speed: float,
               avoid=None, curb_lane: bool = False, blocked=()) -> None:
    """Place vehicles along lane (d, k) between arc positions s0..s1 (positions at t = 0).
    Standing traffic keeps out of the `blocked` intervals (junctions)."""
    rng = sp.rng
    lo, hi = min(s0, s1), max(s0, s1)
    s = lo + rng.uniform(0, 20)
    while s < hi:
        key = _vehicle_key(rng)
        if curb_lane and rng.random() < 0.08:
            key = "cyclist"
        l = CATEGORIES[key][2][0] * 1.08
        with_trailer = key == "truck" and rng.random() < 0.35 and speed > 0
        span = l + (CATEGORIES["trailer"][2][0] * 1.08 + 0.6 if with_trailer else 0.0)
        c = s + span / 2
        if avoid is not None and abs(c - avoid[0]) < span / 2 + avoid[1]:
            s = avoid[0] + avoid[1] + 0.1
            continue
        hit = [b for b in blocked if s < b[1] and s + span > b[0]]
        if hit:
            s = hit[0][1] + 0.5
            continue
        heading = road.heading(d)
        lat = road.lane_offset(d, k)
        if key == "cyclist":
            lat += -d * road.lane_width * 0.3  # keep right within the curb lane
        # Front of the convoy points along d: the truck leads, its trailer follows.
        lead_c = s + (span - l / 2 if d == 1 else l / 2)
        sp.add(key, road.point(lead_c, lat), heading, speed, _attr(key, speed, parked=False))
        if with_trailer:
            tl = CATEGORIES["trailer"][2][0]
            tc = lead_c - d * (l / 2 + 0.6 + tl / 2)
            sp.add("trailer", road.point(tc, lat), heading, speed, _attr("trailer", speed, parked=False))
        s += span + rng.uniform(8.0, 45.0)


def _sidewalk_point(road: Road, s: float, side: int, frac: float) -> np.ndarray:
    lat = side * (road.half_width + CURB_WIDTH + frac * SIDEWALK_WIDTH)
    return road.point(s, lat)


def _sidewalk_life(sp: _Spawner, town: Town, road: Road, s_lo: float, s_hi: float) -> None:
    rng = sp.rng
    for _ in range(int(rng.integers(8, 16))):
        s, side = rng.uniform(s_lo, s_hi), int(rng.choice([-1, 1]))
        if town.material_at(_sidewalk_point(road, s, side, 0.5)) != Material.SIDEWALK:
            continue
        r = rng.random()
        if r < 0.5:
            key = "child" if rng.random() < 0.15 else "adult"
            d = int(rng.choice([-1, 1]))
            sp.add(key, _sidewalk_point(road, s, side, rng.uniform(0.3, 0.7)), road.heading(d),
                   float(rng.uniform(0.9, 1.6)), "pedestrian.moving")
        elif r < 0.72:
            key = str(rng.choice(["adult", "adult", "child", "police_officer"]))
            sp.add(key, _sidewalk_point(road, s, side, rng.uniform(0.2, 0.8)), rng.uniform(-np.pi, np.pi), 0.0,
                   "pedestrian.standing")
        elif r < 0.82:
            sp.add("sitting", _sidewalk_point(road, s, side, 0.85), road.heading(1) + side * np.pi / 2, 0.0,
                   "pedestrian.sitting_lying_down")
        else:
            key = "bicycle" if rng.random() < 0.6 else "motorcycle"
            sp.add(key, _sidewalk_point(road, s, side, 0.8), road.heading(1) + rng.uniform(-0.3, 0.3), 0.0,
                   "cycle.without_rider")


def _crossing_pedestrians(sp: _Spawner, town: Town, road: Road, other: Road, s_centre: float) -> None:
    """People on the zebra crossings of the crossing road next to our road."""
    rng = sp.rng
    for d in (1, -1):
        if rng.random() < 0.5:
            continue
        s_cross = road.center + d * (road.half_width + 6.0 + CROSSING_DEPTH / 2)  # on the other road
        lat = rng.uniform(-other.half_width, other.half_width)
        n_dir = other.n if rng.random() < 0.5 else -other.n  # walking across the road
        sp.add("adult", other.point(s_cross, lat), float(np.arctan2(n_dir[1], n_dir[0])),
               float(rng.uniform(1.0, 1.5)), "pedestrian.moving")


def _carparks(sp: _Spawner, town: Town, s_lo: float, s_hi: float, road: Road) -> None:
    rng = sp.rng
    lo, hi = (road.point(s_lo, -60), road.point(s_hi, 60))
    region = (min(lo[0], hi[0]), min(lo[1], hi[1]), max(lo[0], hi[0]), max(lo[1], hi[1]))
    for cp in town.layers.carpark_areas:
        minx, miny, maxx, maxy = cp.bounds
        if maxx < region[0] or minx > region[2] or maxy < region[1] or miny > region[3]:
            continue
        wide_x = (maxx - minx) > (maxy - miny)
        lo_t, hi_t = (minx, maxx) if wide_x else (miny, maxy)
        for t in np.arange(lo_t + 1.0 + 1.35, hi_t - 1.0, 2.7):
            for row in (0, 1):
                if rng.random() < 0.4:
                    continue
                key = "car" if rng.random() < 0.85 else str(rng.choice(["police_car", "truck", "motorcycle"]))
                if wide_x:
                    y = (maxy - 2.5) if row else (miny + 2.5)
                    xy, yaw = (t, y), (np.pi / 2 if row == 0 else -np.pi / 2)
                else:
                    x = (maxx - 2.5) if row else (minx + 2.5)
                    xy, yaw = (x, t), (0.0 if row == 0 else np.pi)
                attr = "cycle.without_rider" if key == "motorcycle" else "vehicle.parked"
                blink = 3 if rng.random() < 0.15 else 0  # parked: mostly off, sometimes hazards
                sp.add(key, xy, yaw + rng.uniform(-0.05, 0.05), 0.0, attr, blinker=blink)


def _construction_zone(sp: _Spawner, town: Town, road: Road, s: float, side: int) -> None:
    """Roadside works behind the sidewalk: machine, barriers along the sidewalk, cones, workers."""
    rng = sp.rng
    base = road.half_width + CURB_WIDTH + SIDEWALK_WIDTH
    heading = road.heading(1)
    # Slide the zone along the road until the machine stands on open ground (not a junction
    # or a car park) and the barriers stand on the sidewalk.
    for shift in (0, 15, -15, 30, -30, 45, -45):
        ok = town.material_at(road.point(s + shift, side * (base + 6.0))) == Material.GRASS and all(
            town.material_at(road.point(s + shift + ds, side * (base - 1.0))) == Material.SIDEWALK for ds in (-9, 9))
        if ok:
            s += shift
            break
    sp.add("construction", road.point(s, side * (base + 6.0)), heading + rng.uniform(-0.3, 0.3), 0.0,
           "vehicle.parked", blinker=int(rng.choice([0, 3])))
    for i in range(int(rng.integers(2, 5))):
        sp.add("barrier", road.point(s - 6 + i * 2.8, side * (base - 1.0)), heading, 0.0, None, color=(200, 40, 40))
    for i in range(int(rng.integers(3, 7))):
        sp.add("cone", road.point(s - 9 + i * 3.0, side * (road.half_width + CURB_WIDTH + 0.4)), 0.0, 0.0, None,
               color=(240, 110, 20))
    for _ in range(int(rng.integers(1, 3))):
        sp.add("worker", road.point(s + rng.uniform(-5, 5), side * (base + rng.uniform(2.5, 4.0))),
               rng.uniform(-np.pi, np.pi), 0.0, "pedestrian.standing", color=(250, 140, 0))


def _free_spot(town: Town, road: Road, s: float, lat: float, half_len: float) -> float | None:
    """Slide along the road until [s - half_len, s + half_len] at `lat` is open grass."""
    for shift in np.ravel(np.column_stack([np.arange(0, 80, 7.5), -np.arange(0, 80, 7.5)])):
        if all(town.material_at(road.point(s + shift + ds, lat)) == Material.GRASS for ds in (-half_len, 0, half_len)):
            return float(s + shift)
    return None


def _depot(sp: _Spawner, town: Town, road: Road, s: float, side: int) -> None:
    """A yard behind the sidewalk: parked truck, trailer and bus, bicycles and a motorbike."""
    rng = sp.rng
    base = road.half_width + CURB_WIDTH + SIDEWALK_WIDTH
    spot = _free_spot(town, road, s, side * (base + 5.0), 14.0)
    if spot is None:  # no room on this side (junctions, car parks): try the other one
        side = -side
        spot = _free_spot(town, road, s, side * (base + 5.0), 14.0)
    if spot is None:
        return
    s = spot
    heading = road.heading(int(rng.choice([-1, 1])))
    order = ["truck", "trailer", "bus"]
    rng.shuffle(order)
    pos = s - 14.0
    for key in order:
        l = CATEGORIES[key][2][0]
        sp.add(key, road.point(pos + l / 2, side * (base + 4.5 + rng.uniform(-0.5, 0.5))), heading, 0.0,
               "vehicle.parked", blinker=int(rng.choice(4)) if key != "trailer" else 0)
        pos += l + 1.5
    # Parked two-wheelers spread along both sidewalks, so passing traffic rarely hides them all.
    for key, ds, on_side in (("bicycle", -12.0, side), ("motorcycle", -2.0, side), ("bicycle", 8.0, side),
                             ("bicycle", 3.0, -side), ("motorcycle", -8.0, -side)):
        sp.add(key, _sidewalk_point(road, s + ds, on_side, 0.85), road.heading(1) + on_side * np.pi / 2, 0.0,
               "cycle.without_rider")
    sp.add("adult", _sidewalk_point(road, s + 4, side, 0.5), rng.uniform(-np.pi, np.pi), 0.0, "pedestrian.standing")


def _lights(town: Town, rng: np.random.Generator, road: Road, s_lo: float, s_hi: float) -> list[LightState]:
    """Posts near the route. One phase per intersection; the crossing road gets the complement."""
    lo, hi = road.point(s_lo - 40, -80), road.point(s_hi + 40, 80)
    centres = np.array([(town.roads[b].center, town.roads[a].center) for a, b in town.intersections])
    phases = rng.random(len(centres))
    out = []
    for i, post in enumerate(town.layers.traffic_lights):
        p = np.asarray(post.position)
        if not (min(lo[0], hi[0]) <= p[0] <= max(lo[0], hi[0]) and min(lo[1], hi[1]) <= p[1] <= max(lo[1], hi[1])):
            continue
        phase = phases[int(np.argmin(np.linalg.norm(centres - p, axis=1)))]
        along_x = abs(np.cos(post.yaw)) > 0.5
        ours = (road.axis == 0) == along_x  # this approach runs along the ego's road
        if phase < 0.15:
            state = 3  # off (dark lamps at this junction)
        elif phase < 0.35:
            state = 1 if ours else 0  # yellow for us, red across
        elif phase < 0.67:
            state = 2 if ours else 0
        else:
            state = 0 if ours else 2
        housing_h, pole_h = 1.0, 4.2
        housing = BoxPrim(np.array([p[0], p[1], pole_h + housing_h / 2]), np.array([0.35, 0.4, housing_h]),
                          post.yaw, "traffic_light", (25, 25, 25), -1, light_state=state)
        back = p - 0.3 * np.array([np.cos(post.yaw), np.sin(post.yaw)])  # pole behind the housing
        pole = BoxPrim(np.array([back[0], back[1], pole_h / 2]), np.array([0.2, 0.2, pole_h]), post.yaw, "pole",
                       (70, 70, 72), -1)
        out.append(LightState(i, state, housing, pole))
    return out
