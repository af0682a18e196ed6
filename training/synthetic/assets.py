"""Object appearance: each object is a handful of upright boxes ("parts") with per-face colours
and a simple procedural texture, in the object's own frame (x forward/length, y left/width,
z up from the ground). Shapes are crude but category-specific (cabins, wheels, window bands,
striped barriers), so a model must learn appearance and geometry rather than a colour code.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Face order used everywhere: +x, -x, +y, -y, +z, -z.
N_FACES = 6
TEX_PLAIN, TEX_BAND, TEX_STRIPES, TEX_FACADE = 0, 1, 2, 3

GLASS = (0.12, 0.15, 0.19)
TYRE = (0.06, 0.06, 0.06)
UNDERBODY = (0.09, 0.09, 0.10)
SHADOW = (0.0, 0.0, 0.0)

# Body colours: mostly saturated or mid tones, some white/grey/black as in real traffic.
CAR_PAINT = np.array([
    (0.75, 0.08, 0.08), (0.08, 0.22, 0.65), (0.9, 0.9, 0.88), (0.55, 0.56, 0.58), (0.1, 0.1, 0.11),
    (0.05, 0.45, 0.2), (0.85, 0.55, 0.05), (0.45, 0.12, 0.5), (0.1, 0.55, 0.7), (0.65, 0.6, 0.4),
    (0.9, 0.8, 0.1), (0.35, 0.2, 0.12),
])
SHIRTS = np.array([(0.7, 0.1, 0.1), (0.1, 0.3, 0.7), (0.9, 0.9, 0.9), (0.2, 0.6, 0.3),
                   (0.9, 0.6, 0.1), (0.5, 0.2, 0.6), (0.15, 0.15, 0.15)])
SKIN = np.array([(0.87, 0.7, 0.58), (0.6, 0.42, 0.3), (0.38, 0.25, 0.18)])
WALLS = np.array([(0.72, 0.62, 0.5), (0.6, 0.35, 0.28), (0.65, 0.65, 0.65), (0.8, 0.78, 0.7),
                  (0.45, 0.47, 0.5)])


@dataclass
class Parts:
    """Boxes of one object in its own frame; append with `add`, read the arrays."""

    center: list = field(default_factory=list)   # (3,) box centre in the object frame
    half: list = field(default_factory=list)     # (3,) half extents
    face_rgb: list = field(default_factory=list)  # (6, 3) linear colour per face
    tex: list = field(default_factory=list)      # texture kind (TEX_*)
    tex_rgb: list = field(default_factory=list)  # (3,) second texture colour
    tex_param: list = field(default_factory=list)  # (2,) texture parameters
    decal: list = field(default_factory=list)    # True: drawn, but not part of the object (shadow)

    def add(self, center, size, rgb, faces: dict[int, tuple] | None = None, tex: int = TEX_PLAIN,
            tex_rgb=(1.0, 1.0, 1.0), tex_param=(0.0, 0.0), decal: bool = False) -> None:
        face_rgb = np.tile(np.asarray(rgb, float), (N_FACES, 1))
        for face, colour in (faces or {}).items():
            face_rgb[face] = colour
        self.center.append(np.asarray(center, float))
        self.half.append(np.asarray(size, float) / 2)
        self.face_rgb.append(face_rgb)
        self.tex.append(tex)
        self.tex_rgb.append(np.asarray(tex_rgb, float))
        self.tex_param.append(np.asarray(tex_param, float))
        self.decal.append(decal)

    def __len__(self) -> int:
        return len(self.center)


def _sides(colour) -> dict[int, tuple]:
    return {0: colour, 1: colour, 2: colour, 3: colour}


def _shadow(p: Parts, length: float, w: float) -> None:
    # Contact shadow: a dark decal slightly larger than the footprint, as under real vehicles.
    p.add((0.0, 0.0, 0.005), (length + 0.3, w + 0.3, 0.01), SHADOW, decal=True)


def _wheels(p: Parts, length: float, w: float, xs: list[float], radius: float = 0.33,
            width: float = 0.24) -> None:
    for x in xs:
        for side in (-1, 1):
            p.add((x, side * (w / 2 - width / 2), radius), (2 * radius, width, 2 * radius), TYRE)


def _person(p: Parts, x: float, w: float, h: float, z0: float, rng: np.random.Generator,
            legs: bool = True) -> tuple[float, float, float]:
    """A standing (legs=True) or seated figure of height h whose feet/seat are at z0; returns the
    shirt colour."""
    shirt, skin = SHIRTS[rng.integers(len(SHIRTS))], SKIN[rng.integers(len(SKIN))]
    head = 0.23
    if legs:
        leg_h = 0.47 * h
        p.add((x, 0.0, z0 + leg_h / 2), (0.3, 0.55 * w, leg_h), (0.12, 0.12, 0.2))
    else:
        leg_h = 0.0
    torso_h = h - leg_h - head
    p.add((x, 0.0, z0 + leg_h + torso_h / 2), (0.32, w, torso_h), shirt)
    p.add((x, 0.0, z0 + h - head / 2), (0.2, 0.2, head), skin)
    return tuple(shirt)


_Shape = tuple[Parts, tuple[float, float, float]]


def _car(p: Parts, w: float, length: float, h: float, rng: np.random.Generator,
         with_rider: bool) -> tuple[float, float, float]:
    paint = CAR_PAINT[rng.integers(len(CAR_PAINT))]
    _shadow(p, length, w)
    p.add((0.0, 0.0, 0.2), (length - 0.6, w - 0.3, 0.2), UNDERBODY)
    _wheels(p, length, w, [length / 2 - 0.85, -length / 2 + 0.8])
    body_top = 0.6 * h
    p.add((0.0, 0.0, (0.3 + body_top) / 2), (length, w - 0.08, body_top - 0.3), paint)
    cabin_l = 0.52 * length
    p.add((-0.06 * length, 0.0, (body_top + h) / 2), (cabin_l, 0.86 * w, h - body_top), paint,
          faces=_sides(GLASS))
    return tuple(paint)


def _truck(p: Parts, w: float, length: float, h: float, rng: np.random.Generator,
           with_rider: bool) -> tuple[float, float, float]:
    paint = CAR_PAINT[rng.integers(len(CAR_PAINT))]
    cargo = ((0.92, 0.92, 0.9) if rng.random() < 0.5
             else CAR_PAINT[rng.integers(len(CAR_PAINT))])
    _shadow(p, length, w)
    _wheels(p, length, w, [length / 2 - 1.0, -length / 2 + 1.6, -length / 2 + 0.7],
            radius=0.48, width=0.3)
    cab_l = 2.2
    p.add((length / 2 - cab_l / 2, 0.0, 0.45 + (0.8 * h - 0.45) / 2),
          (cab_l, w - 0.05, 0.8 * h - 0.45), paint,
          tex=TEX_BAND, tex_rgb=GLASS, tex_param=(0.62, 0.92))
    p.add((-cab_l / 2 - 0.05, 0.0, 0.55 + (h - 0.55) / 2),
          (length - cab_l - 0.1, w, h - 0.55), cargo)
    return tuple(paint)


def _bus(p: Parts, w: float, length: float, h: float, rng: np.random.Generator,
         with_rider: bool) -> tuple[float, float, float]:
    paint = CAR_PAINT[rng.integers(len(CAR_PAINT))]
    _shadow(p, length, w)
    _wheels(p, length, w, [length / 2 - 2.2, -length / 2 + 2.5], radius=0.5, width=0.3)
    p.add((0.0, 0.0, 0.4 + (h - 0.4) / 2), (length, w - 0.04, h - 0.4), paint,
          tex=TEX_BAND, tex_rgb=GLASS, tex_param=(0.45, 0.85))
    return tuple(paint)


def _two_wheeler(moto: bool):
    def build(p: Parts, w: float, length: float, h: float, rng: np.random.Generator,
              with_rider: bool) -> tuple[float, float, float]:
        paint = CAR_PAINT[rng.integers(len(CAR_PAINT))] if moto else np.array((0.2, 0.2, 0.22))
        r = 0.32 if moto else 0.34
        for x in (length / 2 - r, -length / 2 + r):
            p.add((x, 0.0, r), (2 * r, 0.12 if moto else 0.05, 2 * r), TYRE)
        if moto:
            p.add((0.0, 0.0, 0.62), (length - 2 * r, 0.4, 0.45), paint)
        else:
            p.add((0.0, 0.0, 0.6), (length - 2 * r, 0.07, 0.35), paint)
        if with_rider:
            seat = 0.8 if moto else 0.85
            _person(p, -0.1, min(w, 0.55), h - seat, seat, rng, legs=False)
        return tuple(paint)
    return build


def _pedestrian(p: Parts, w: float, length: float, h: float, rng: np.random.Generator,
                with_rider: bool) -> tuple[float, float, float]:
    return _person(p, 0.0, w, h, 0.0, rng)


def _barrier(p: Parts, w: float, length: float, h: float, rng: np.random.Generator,
             with_rider: bool) -> tuple[float, float, float]:
    striped = rng.random() < 0.5
    base = (0.85, 0.15, 0.1) if striped else (0.78, 0.78, 0.74)
    p.add((0.0, 0.0, h / 2), (length, w, h), base, tex=TEX_STRIPES if striped else TEX_PLAIN,
          tex_rgb=(0.95, 0.95, 0.95), tex_param=(0.5, 0.0))
    return tuple(base)


def _trafficcone(p: Parts, w: float, length: float, h: float, rng: np.random.Generator,
                 with_rider: bool) -> tuple[float, float, float]:
    orange = (0.95, 0.4, 0.05)
    p.add((0.0, 0.0, 0.025), (length, w, 0.05), orange)
    p.add((0.0, 0.0, 0.05 + (h - 0.05) / 2), (0.45 * length, 0.45 * w, h - 0.05), orange,
          tex=TEX_BAND, tex_rgb=(0.95, 0.95, 0.95), tex_param=(0.5, 0.7))
    return orange


_SHAPES = {
    "vehicle.car": _car,
    "vehicle.truck": _truck,
    "vehicle.bus.rigid": _bus,
    "vehicle.motorcycle": _two_wheeler(True),
    "vehicle.bicycle": _two_wheeler(False),
    "human.pedestrian.adult": _pedestrian,
    "movable_object.barrier": _barrier,
    "movable_object.trafficcone": _trafficcone,
}


def build_parts(category: str, wlh: tuple[float, float, float], rng: np.random.Generator,
                with_rider: bool = True) -> _Shape:
    """Parts of an annotated object of nuScenes `category` and size (w, l, h); returns the parts
    and the object's dominant colour (used by tests to recognise it in the images)."""
    shape = _SHAPES.get(category)
    if shape is None:
        raise ValueError(f"no shape for category {category!r}")
    w, length, h = wlh
    p = Parts()
    colour = shape(p, w, length, h, rng, with_rider)
    return p, colour


def build_clutter(kind: str, size_lwh: tuple[float, float, float],
                  rng: np.random.Generator) -> Parts:
    """Static, unannotated scenery: buildings, poles, trees."""
    length, w, h = size_lwh
    p = Parts()
    if kind == "building":
        wall = WALLS[rng.integers(len(WALLS))]
        p.add((0.0, 0.0, h / 2), (length, w, h), wall, faces={4: (0.3, 0.3, 0.32)},
              tex=TEX_FACADE, tex_rgb=GLASS, tex_param=(rng.uniform(2.5, 4.0), 3.2))
    elif kind == "pole":
        p.add((0.0, 0.0, h / 2), (length, w, h), (0.4, 0.42, 0.45))
    elif kind == "tree":
        p.add((0.0, 0.0, 1.5), (0.3, 0.3, 3.0), (0.3, 0.2, 0.12))
        p.add((0.0, 0.0, 3.0 + (h - 3.0) / 2), (length, w, h - 3.0),
              (0.12, 0.35 + 0.15 * rng.random(), 0.1))
    else:
        raise ValueError(f"no clutter kind {kind!r}")
    return p
