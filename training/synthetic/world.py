"""The procedural world of one scene: road layout, ego path, moving agents and static scenery.

Everything is an analytic function of time (seconds since the scene start), so any sensor can
sample the world at its own timestamp. Global frame: x, y on the ground plane (z = 0), z up.
Right-hand traffic: +s lanes at d < 0, -s lanes at d > 0 (d is the left offset from the centre).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .assets import Parts, build_clutter, build_parts
from .config import SynthConfig

LANE_W = 3.5
LANES = ((-5.25, 1), (-1.75, 1), (1.75, -1), (5.25, -1))  # (d centre, direction along s)
ROAD_HALF = 7.0      # outer edge of the traffic lanes
PARK_D = 8.25        # parking strip centre line
CURB_HALF = 9.5      # curb: end of the drivable surface
SIDEWALK_HALF = 13.0
CROSS_HALF = 6.0     # half width of the cross street
CROSS_LANES = ((-4.5, 1), (-1.5, 1), (1.5, -1), (4.5, -1))

# nuScenes mean sizes (w, l, h) and spreads, from the dataset's published statistics (rounded).
SIZE_MEAN_STD = {
    "vehicle.car": ((1.95, 4.62, 1.73), (0.12, 0.35, 0.15)),
    "vehicle.truck": ((2.5, 7.0, 2.9), (0.15, 1.2, 0.35)),
    "vehicle.bus.rigid": ((2.95, 11.0, 3.45), (0.08, 1.0, 0.15)),
    "vehicle.motorcycle": ((0.77, 2.1, 1.47), (0.05, 0.15, 0.08)),
    "vehicle.bicycle": ((0.6, 1.7, 1.3), (0.05, 0.1, 0.06)),
    "human.pedestrian.adult": ((0.67, 0.73, 1.77), (0.06, 0.08, 0.1)),
    "movable_object.barrier": ((2.5, 0.5, 0.98), (0.1, 0.05, 0.06)),
    "movable_object.trafficcone": ((0.41, 0.41, 1.07), (0.03, 0.03, 0.08)),
}
LANE_MIX = (("vehicle.car", 0.78), ("vehicle.truck", 0.09), ("vehicle.bus.rigid", 0.05),
            ("vehicle.motorcycle", 0.08))


@dataclass(frozen=True)
class Road:
    """Main road centre line: an arc (or a straight line when curvature == 0) in road
    coordinates (s along, d to the left)."""

    origin_xy: tuple[float, float]
    heading0: float
    curvature: float

    def to_global(self, s: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(s, d) -> (xy (N, 2), heading of the +s direction (N,))."""
        s, d = np.broadcast_arrays(np.asarray(s, float), np.asarray(d, float))
        heading = self.heading0 + self.curvature * s
        normal = np.stack([-np.sin(heading), np.cos(heading)], -1)  # left normal
        if self.curvature == 0.0:
            tangent0 = np.array([np.cos(self.heading0), np.sin(self.heading0)])
            ref = np.asarray(self.origin_xy) + s[..., None] * tangent0
        else:
            n0 = np.array([-np.sin(self.heading0), np.cos(self.heading0)])
            centre = np.asarray(self.origin_xy) + n0 / self.curvature
            ref = centre - normal / self.curvature
        return ref + d[..., None] * normal, heading

    def to_road(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global xy (..., 2) -> (s, d). Exact inverse of to_global within the arc's half plane."""
        xy = np.asarray(xy, float)
        if self.curvature == 0.0:
            rel = xy - np.asarray(self.origin_xy)
            c, s_ = np.cos(self.heading0), np.sin(self.heading0)
            return rel[..., 0] * c + rel[..., 1] * s_, -rel[..., 0] * s_ + rel[..., 1] * c
        k = self.curvature
        n0 = np.array([-np.sin(self.heading0), np.cos(self.heading0)])
        q = xy - (np.asarray(self.origin_xy) + n0 / k)
        radius = np.linalg.norm(q, axis=-1)
        normal = -np.sign(k) * q / np.maximum(radius, 1e-9)[..., None]
        heading = np.arctan2(-normal[..., 0], normal[..., 1])
        dheading = np.angle(np.exp(1j * (heading - self.heading0)))  # wrapped to (-pi, pi]
        return dheading / k, 1.0 / k - np.sign(k) * radius


@dataclass(frozen=True)
class CrossStreet:
    """A straight street crossing the main road at s = s_cross, perpendicular to it."""

    origin_xy: np.ndarray  # main-road centre point at s_cross
    along: np.ndarray      # unit vector along the cross street (main road's left normal)
    lateral: np.ndarray    # unit vector across it (main road's tangent)

    def coords(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rel = np.asarray(xy, float) - self.origin_xy
        return rel @ self.along, rel @ self.lateral


@dataclass(frozen=True)
class LaneMotion:
    """Constant speed along a main-road lane (follows the arc)."""

    road: Road
    s0: float
    d: float
    direction: int
    speed: float

    def pose(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """t (T,) -> xy (T, 2), yaw (T,), velocity_xy (T, 2)."""
        t = np.asarray(t, float)
        s = self.s0 + self.direction * self.speed * t
        xy, heading = self.road.to_global(s, np.full_like(s, self.d))
        yaw = heading + (np.pi if self.direction < 0 else 0.0)
        velocity = self.speed * np.stack([np.cos(yaw), np.sin(yaw)], -1)
        return xy, yaw, velocity


@dataclass(frozen=True)
class LinearMotion:
    """Constant velocity along a straight line (speed 0: parked or standing)."""

    xy0: tuple[float, float]
    yaw: float
    speed: float

    def pose(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t = np.asarray(t, float)
        direction = np.array([np.cos(self.yaw), np.sin(self.yaw)])
        xy = np.asarray(self.xy0) + t[:, None] * self.speed * direction
        return xy, np.full(t.shape, self.yaw), np.tile(self.speed * direction, (len(t), 1))


@dataclass
class Agent:
    """An annotated object: category, nuScenes size (w, l, h), appearance and motion."""

    category: str
    size_wlh: tuple[float, float, float]
    parts: Parts
    colour: tuple[float, float, float]
    attribute: str | None
    motion: LaneMotion | LinearMotion


@dataclass
class BoxArray:
    """Upright (yaw-only) boxes in the global frame at one instant, one row per part."""

    center: np.ndarray     # (N, 3)
    yaw: np.ndarray        # (N,)
    half: np.ndarray       # (N, 3) half extents along the box's x, y, z
    owner: np.ndarray      # (N,) agent index, or -1 for scenery
    face_rgb: np.ndarray   # (N, 6, 3)
    tex: np.ndarray        # (N,)
    tex_rgb: np.ndarray    # (N, 3)
    tex_param: np.ndarray  # (N, 2)
    decal: np.ndarray      # (N,) bool

    def __len__(self) -> int:
        return len(self.yaw)


def place_local(local_xyz: np.ndarray, xy: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Object-frame points (N, 3) of objects at global xy (N, 2) with yaw (N,) -> global (N, 3)."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.stack([xy[:, 0] + c * local_xyz[:, 0] - s * local_xyz[:, 1],
                     xy[:, 1] + s * local_xyz[:, 0] + c * local_xyz[:, 1], local_xyz[:, 2]], -1)


def _stack_parts(parts_list: list[Parts], owners: list[int]) -> dict[str, np.ndarray]:
    def cat(name: str) -> np.ndarray:
        return np.asarray([v for p in parts_list for v in getattr(p, name)])
    return dict(center=cat("center").reshape(-1, 3), half=cat("half").reshape(-1, 3),
                face_rgb=cat("face_rgb").reshape(-1, 6, 3), tex=cat("tex").astype(np.int64),
                tex_rgb=cat("tex_rgb").reshape(-1, 3), tex_param=cat("tex_param").reshape(-1, 2),
                decal=cat("decal").astype(bool),
                owner=np.repeat(np.asarray(owners, np.int64), [len(p) for p in parts_list]))


@dataclass
class World:
    road: Road
    cross: CrossStreet
    s_cross: float
    ego: LaneMotion
    agents: list[Agent]
    sun_dir: np.ndarray  # unit vector towards the sun
    scenery: dict[str, np.ndarray] = field(default_factory=dict)  # static parts, global poses
    _agent_parts: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._agent_parts = _stack_parts([a.parts for a in self.agents],
                                         list(range(len(self.agents))))

    def agent_states(self, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All agents at time t: xy (A, 2), yaw (A,), velocity_xy (A, 2)."""
        if not self.agents:
            return np.zeros((0, 2)), np.zeros(0), np.zeros((0, 2))
        states = [a.motion.pose(np.array([t])) for a in self.agents]
        return (np.concatenate([s[0] for s in states]), np.concatenate([s[1] for s in states]),
                np.concatenate([s[2] for s in states]))

    def boxes_at(self, t: float) -> BoxArray:
        """Every part of every agent posed at time t, followed by the static scenery."""
        xy, yaw, _ = self.agent_states(t)
        p = self._agent_parts
        part_yaw = yaw[p["owner"]]
        center = place_local(p["center"], xy[p["owner"]], part_yaw)
        sc = self.scenery
        return BoxArray(
            center=np.concatenate([center, sc["center"]]),
            yaw=np.concatenate([part_yaw, sc["yaw"]]),
            half=np.concatenate([p["half"], sc["half"]]),
            owner=np.concatenate([p["owner"], sc["owner"]]),
            face_rgb=np.concatenate([p["face_rgb"], sc["face_rgb"]]),
            tex=np.concatenate([p["tex"], sc["tex"]]),
            tex_rgb=np.concatenate([p["tex_rgb"], sc["tex_rgb"]]),
            tex_param=np.concatenate([p["tex_param"], sc["tex_param"]]),
            decal=np.concatenate([p["decal"], sc["decal"]]))

    def drivable(self, xy: np.ndarray) -> np.ndarray:
        """True on the road surface (main road up to the curbs, and the cross street)."""
        _, d = self.road.to_road(xy)
        along, lateral = self.cross.coords(xy)
        return (np.abs(d) < CURB_HALF) | ((np.abs(lateral) < CROSS_HALF) & (np.abs(along) < 200.0))


def _size(category: str, rng: np.random.Generator) -> tuple[float, float, float]:
    mean, std = SIZE_MEAN_STD[category]
    wlh = np.asarray(mean) + np.clip(rng.normal(0.0, 1.0, 3), -2, 2) * np.asarray(std)
    return tuple(float(v) for v in wlh)


def _pick(mix: tuple[tuple[str, float], ...], rng: np.random.Generator) -> str:
    names, probs = zip(*mix)
    return names[rng.choice(len(names), p=np.asarray(probs) / sum(probs))]


def _vehicle_attribute(speed: float, parked: bool) -> str:
    if speed > 0.3:
        return "vehicle.moving"
    return "vehicle.parked" if parked else "vehicle.stopped"


class _Builder:
    """Accumulates agents and scenery while keeping the sampling order (hence the output) fixed."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.agents: list[Agent] = []
        self.scenery_parts: list[Parts] = []
        self.scenery_pose: list[tuple[float, float, float]] = []  # x, y, yaw

    def agent(self, category: str, motion, speed: float, attribute: str | None,
              size: tuple[float, float, float] | None = None) -> None:
        wlh = size or _size(category, self.rng)
        with_rider = attribute != "cycle.without_rider"
        parts, colour = build_parts(category, wlh, self.rng, with_rider=with_rider)
        self.agents.append(Agent(category, wlh, parts, colour, attribute, motion))

    def scenery(self, kind: str, xy: np.ndarray, yaw: float,
                size_lwh: tuple[float, float, float]) -> None:
        self.scenery_parts.append(build_clutter(kind, size_lwh, self.rng))
        self.scenery_pose.append((float(xy[0]), float(xy[1]), float(yaw)))

    def scenery_arrays(self) -> dict[str, np.ndarray]:
        arrays = _stack_parts(self.scenery_parts, [-1] * len(self.scenery_parts))
        poses = np.repeat(np.asarray(self.scenery_pose).reshape(-1, 3),
                          [len(p) for p in self.scenery_parts], axis=0)
        arrays["center"] = place_local(arrays["center"], poses[:, :2], poses[:, 2])
        arrays["yaw"] = poses[:, 2].copy()
        return arrays


@dataclass(frozen=True)
class _Layout:
    """What every section of sample_world shares: the roads, the ego and the s range."""

    road: Road
    cross: CrossStreet
    s_cross: float
    ego: LaneMotion
    ego_speed: float
    ego_lane: float
    s_lo: float
    s_hi: float

    def near_cross(self, s: float, margin: float) -> bool:
        return abs(s - self.s_cross) < CROSS_HALF + margin


def _sample_layout(rng: np.random.Generator, duration_s: float) -> _Layout:
    """The main road, the ego's lane and speed, and the cross street."""
    curvature = (0.0 if rng.random() < 0.4
                 else float(rng.choice([-1, 1]) / rng.uniform(250.0, 600.0)))
    # Keep global coordinates positive and modest (the map mask starts at the global origin).
    road = Road(origin_xy=(float(rng.uniform(110, 140)), float(rng.uniform(110, 140))),
                heading0=float(rng.uniform(np.deg2rad(20), np.deg2rad(70))), curvature=curvature)
    ego_speed = 0.0 if rng.random() < 0.1 else float(rng.uniform(3.0, 11.0))
    ego_lane = float(rng.choice([-5.25, -1.75]))
    ego = LaneMotion(road, 0.0, ego_lane, 1, ego_speed)
    travel = ego_speed * duration_s
    s_lo, s_hi = -110.0, travel + 110.0
    s_cross = float(travel / 2 + rng.uniform(15.0, 45.0) * rng.choice([-1, 1]))
    xy_c, heading_c = road.to_global(np.array([s_cross]), np.array([0.0]))
    cross = CrossStreet(origin_xy=xy_c[0],
                        along=np.array([-np.sin(heading_c[0]), np.cos(heading_c[0])]),
                        lateral=np.array([np.cos(heading_c[0]), np.sin(heading_c[0])]))
    return _Layout(road=road, cross=cross, s_cross=s_cross, ego=ego, ego_speed=ego_speed,
                   ego_lane=ego_lane, s_lo=s_lo, s_hi=s_hi)


def _add_traffic(b: _Builder, rng: np.random.Generator, cfg: SynthConfig, lay: _Layout,
                 duration_s: float) -> None:
    """Traffic lanes: one speed per lane (vehicles in a lane never collide); the ego's lane
    moves with the ego, and leaves a gap around it."""
    for d, direction in LANES:
        speed = lay.ego_speed if d == lay.ego_lane else (0.0 if rng.random() < 0.1
                                                         else float(rng.uniform(3.0, 13.0)))
        span = speed * duration_s
        s = lay.s_lo - span + rng.uniform(0, 10)
        while s < lay.s_hi + span:
            category = _pick(LANE_MIX, rng)
            wlh = _size(category, rng)
            length = wlh[1]
            centre = s + length / 2
            if not (d == lay.ego_lane and abs(centre - 1.3) < length / 2 + 6.0):
                motion = LaneMotion(lay.road, centre, d + float(rng.normal(0, 0.15)), direction,
                                    speed)
                b.agent(category, motion, speed, _vehicle_attribute(speed, False), wlh)
            s += length + rng.uniform(*cfg.lane_gap_m)


def _add_construction(b: _Builder, rng: np.random.Generator, road: Road, s: float,
                      side: int) -> float:
    """A row of barriers, cones along the lane edge; returns the strip length used."""
    count = int(rng.integers(3, 7))
    for i in range(count):
        xy, heading = road.to_global(np.array([s + 1.3 * i]), np.array([side * PARK_D]))
        b.agent("movable_object.barrier",
                LinearMotion(tuple(xy[0]), float(heading[0] - np.pi / 2), 0.0), 0.0, None)
        if i % 2 == 0:
            xy, _ = road.to_global(np.array([s + 1.3 * i]),
                                   np.array([side * (ROAD_HALF + 0.25)]))
            b.agent("movable_object.trafficcone", LinearMotion(tuple(xy[0]), 0.0, 0.0), 0.0,
                    None)
    return 1.3 * count + 3.0


def _add_parked_car(b: _Builder, rng: np.random.Generator, road: Road, s: float,
                    side: int) -> float:
    """One parked car or truck; returns the strip length used."""
    yaw_offset = 0.0 if side < 0 else np.pi
    category = "vehicle.car" if rng.random() < 0.9 else "vehicle.truck"
    wlh = _size(category, rng)
    centre = s + wlh[1] / 2
    xy, heading = road.to_global(np.array([centre]),
                                 np.array([side * PARK_D + rng.normal(0, 0.1)]))
    b.agent(category,
            LinearMotion(tuple(xy[0]),
                         float(heading[0] + yaw_offset + rng.normal(0, 0.03)), 0.0),
            0.0, "vehicle.parked", wlh)
    return wlh[1] + rng.uniform(0.8, 3.0)


def _add_parking(b: _Builder, rng: np.random.Generator, cfg: SynthConfig,
                 lay: _Layout) -> None:
    """Parking strips on both sides, with the occasional barrier/cone construction zone."""
    for side in (-1, 1):
        s = lay.s_lo + rng.uniform(0, 5)
        while s < lay.s_hi:
            if lay.near_cross(s, 4.0):
                s += 4.0
                continue
            r = rng.random()
            if r < 0.06:  # construction zone
                s += _add_construction(b, rng, lay.road, s, side)
            elif r < 0.06 + cfg.parked_prob:
                s += _add_parked_car(b, rng, lay.road, s, side)
            else:
                s += rng.uniform(5.0, 15.0)


def _add_sidewalks(b: _Builder, rng: np.random.Generator, cfg: SynthConfig,
                   lay: _Layout) -> None:
    """Sidewalks: pedestrians in two walking lines, cyclists between them."""
    for side in (-1, 1):
        for d_walk, kind in ((10.4, "ped"), (11.2, "bike"), (12.0, "ped")):
            rate = cfg.pedestrians_per_100m / 2 if kind == "ped" else 0.5
            count = int(rng.poisson(rate * (lay.s_hi - lay.s_lo) / 100.0))
            for s in np.sort(rng.uniform(lay.s_lo, lay.s_hi, count)):
                if lay.near_cross(float(s), 2.0):
                    continue
                direction = int(rng.choice([-1, 1]))
                if kind == "ped":
                    speed = 0.0 if rng.random() < 0.2 else float(rng.uniform(1.0, 1.6))
                    b.agent("human.pedestrian.adult",
                            LaneMotion(lay.road, float(s), side * d_walk, direction, speed),
                            speed, "pedestrian.moving" if speed > 0 else "pedestrian.standing")
                else:
                    speed = float(rng.uniform(3.0, 6.0))
                    b.agent("vehicle.bicycle",
                            LaneMotion(lay.road, float(s), side * d_walk, direction, speed),
                            speed, "cycle.with_rider")


def _add_cross_traffic(b: _Builder, rng: np.random.Generator, cfg: SynthConfig,
                       cross: CrossStreet) -> None:
    """Cross street: queues waiting at the main road, and vehicles driving away from it."""
    for end in (-1, 1):  # which side of the main road
        for lat, lane_dir in CROSS_LANES:
            # Right-hand traffic: these lanes head towards the main road.
            toward = lane_dir * end > 0
            yaw = float(np.arctan2(*(cross.along * (-end if toward else end))[::-1]))
            along = CURB_HALF + 4.0 + rng.uniform(0, 3)
            speed = 0.0 if toward else float(rng.uniform(3.0, 9.0))
            for _ in range(int(rng.integers(0, 3))):
                category = _pick(LANE_MIX, rng)
                wlh = _size(category, rng)
                centre = along + wlh[1] / 2
                xy = cross.origin_xy + end * centre * cross.along + lat * cross.lateral
                b.agent(category, LinearMotion(tuple(xy), yaw, speed), speed,
                        _vehicle_attribute(speed, False), wlh)
                along = (centre + wlh[1] / 2
                         + rng.uniform(*cfg.lane_gap_m) / (1.0 if speed else 4.0))


def _add_buildings(b: _Builder, rng: np.random.Generator, lay: _Layout, side: int) -> None:
    """Buildings behind one sidewalk."""
    s = lay.s_lo - 40 + rng.uniform(0, 10)
    while s < lay.s_hi + 40:
        length = float(rng.uniform(10, 30))
        centre = s + length / 2
        if not lay.near_cross(centre, length / 2 + 6.0):
            depth = float(rng.uniform(8, 18))
            d = side * (rng.uniform(15.5, 19.0) + depth / 2)
            xy, heading = lay.road.to_global(np.array([centre]), np.array([d]))
            b.scenery("building", xy[0], float(heading[0]),
                      (length, depth, float(rng.uniform(6, 24))))
        s += length + rng.uniform(2, 12)


def _add_poles_and_trees(b: _Builder, rng: np.random.Generator, lay: _Layout,
                         side: int) -> None:
    """Poles and trees at one sidewalk's outer edge."""
    s = lay.s_lo + rng.uniform(0, 10)
    while s < lay.s_hi:
        if not lay.near_cross(s, 2.0):
            xy, heading = lay.road.to_global(np.array([s]),
                                             np.array([side * (SIDEWALK_HALF - 0.1)]))
            if rng.random() < 0.5:
                b.scenery("pole", xy[0], float(heading[0]),
                          (0.25, 0.25, float(rng.uniform(5, 8))))
            else:
                size = float(rng.uniform(2.0, 3.5))
                b.scenery("tree", xy[0], float(heading[0]),
                          (size, size, float(rng.uniform(5.5, 8))))
        s += rng.uniform(12, 30)


def _sample_sun(rng: np.random.Generator) -> np.ndarray:
    azimuth, elevation = rng.uniform(0, 2 * np.pi), rng.uniform(np.deg2rad(30), np.deg2rad(65))
    return np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth),
                     np.sin(elevation)])


def sample_world(rng: np.random.Generator, cfg: SynthConfig, duration_s: float) -> World:
    """Draw one scene's world. The ego drives along the main road for duration_s seconds."""
    b = _Builder(rng)
    lay = _sample_layout(rng, duration_s)
    _add_traffic(b, rng, cfg, lay, duration_s)
    _add_parking(b, rng, cfg, lay)
    _add_sidewalks(b, rng, cfg, lay)
    _add_cross_traffic(b, rng, cfg, lay.cross)
    # Scenery: buildings behind the sidewalks, poles and trees at the sidewalk's outer edge.
    for side in (-1, 1):
        _add_buildings(b, rng, lay, side)
        _add_poles_and_trees(b, rng, lay, side)
    sun = _sample_sun(rng)
    return World(road=lay.road, cross=lay.cross, s_cross=lay.s_cross, ego=lay.ego,
                 agents=b.agents, sun_dir=sun, scenery=b.scenery_arrays())
