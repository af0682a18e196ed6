"""Static nuScenes tables (category, attribute, visibility, sensor) and deterministic tokens."""
from __future__ import annotations

import hashlib

from .rig import ALL_SENSORS

CATEGORIES = (
    ("human.pedestrian.adult", "Adult subcategory."),
    ("human.pedestrian.child", "Child subcategory."),
    ("human.pedestrian.wheelchair", "Wheelchairs."), ("human.pedestrian.stroller", "Strollers."),
    ("human.pedestrian.personal_mobility", "Personal mobility devices."),
    ("human.pedestrian.police_officer", "Police officer."),
    ("human.pedestrian.construction_worker", "Construction worker."), ("animal", "Animals."),
    ("vehicle.car", "Vehicle designed primarily for personal use."),
    ("vehicle.motorcycle", "Motorcycles and scooters."),
    ("vehicle.bicycle", "Human or electric powered 2-wheeled vehicle."),
    ("vehicle.bus.bendy", "Bendy bus."), ("vehicle.bus.rigid", "Rigid bus."),
    ("vehicle.truck", "Vehicles primarily designed to haul cargo."),
    ("vehicle.construction", "Construction vehicles."),
    ("vehicle.emergency.ambulance", "Ambulances."),
    ("vehicle.emergency.police", "Police vehicles."), ("vehicle.trailer", "Trailers."),
    ("movable_object.barrier", "Temporary road barrier."),
    ("movable_object.trafficcone", "Traffic cones."),
    ("movable_object.pushable_pullable", "Carts, dollies, wheelbarrows."),
    ("movable_object.debris", "Debris."),
    ("static_object.bicycle_rack", "Bicycle racks."),
)
ATTRIBUTES = (
    ("vehicle.moving", "Vehicle is moving."),
    ("vehicle.stopped", "Vehicle, with a driver/rider, is stationary."),
    ("vehicle.parked", "Vehicle is stationary with no driver/rider."),
    ("cycle.with_rider", "There is a rider."), ("cycle.without_rider", "There is no rider."),
    ("pedestrian.sitting_lying_down", "Sitting or lying down."),
    ("pedestrian.standing", "Standing."), ("pedestrian.moving", "Moving."),
)
# nuScenes visibility bins: token -> (level, lower bound of the visible fraction).
VISIBILITY = (("1", "v0-40", 0.0), ("2", "v40-60", 0.4), ("3", "v60-80", 0.6),
              ("4", "v80-100", 0.8))


def token(*parts: object) -> str:
    """A nuScenes-style 32-hex token, a pure function of its parts (so output is reproducible)."""
    return hashlib.md5("|".join(map(str, parts)).encode()).hexdigest()


def visibility_token(visible_fraction: float) -> str:
    """Bin a visible fraction in [0, 1] into nuScenes' visibility tokens '1'..'4'."""
    chosen = VISIBILITY[0][0]
    for tok, _, lower in VISIBILITY:
        if visible_fraction >= lower:
            chosen = tok
    return chosen


def static_tables() -> dict[str, list[dict]]:
    return {
        "category": [{"token": token("category", n), "name": n, "description": d}
                     for n, d in CATEGORIES],
        "attribute": [{"token": token("attribute", n), "name": n, "description": d}
                      for n, d in ATTRIBUTES],
        "visibility": [{"token": t, "level": level,
                        "description": "visibility of whole object is between "
                                       f"{level[1:].replace('-', ' and ')}%"}
                       for t, level, _ in VISIBILITY],
        "sensor": [{"token": token("sensor", s.channel), "channel": s.channel,
                    "modality": s.modality}
                   for s in ALL_SENSORS],
    }
