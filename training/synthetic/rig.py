"""The sensor rig: nuScenes channel names, ego_T_sensor calibrations and capture timing.

Numbers approximate the real nuScenes rig (Renault Zoe): 6 cameras at ~1.5 m height, 5 radars at
bumper height, LIDAR_TOP on the roof. Ego frame: x forward, y left, z up, origin on the ground
below the rear axle. Camera frames are optical (x right, y down, z forward); LIDAR_TOP is x right,
y forward, z up (as in nuScenes); radar frames are x forward, y left, z up.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pyquaternion import Quaternion

IMAGE_W, IMAGE_H = 1600, 900

# Optical camera axes expressed in a forward-facing ego frame: x_cam -> -y_ego, y_cam -> -z_ego,
# z_cam -> x_ego. Columns are the camera axes.
EGO_R_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


@dataclass(frozen=True)
class SensorSpec:
    """One sensor's nominal calibration; per-log jitter is applied by `calibrate`."""

    channel: str
    modality: str  # 'camera' | 'radar' | 'lidar' (nuScenes sensor.modality)
    translation_ego: tuple[float, float, float]
    yaw_deg: float  # heading of the sensor's looking direction in the ego frame
    intrinsics: tuple[float, float, float, float] | None = None  # fx, fy, cx, cy (pixels)
    time_offset_us: int = 0  # capture time relative to the keyframe's LIDAR_TOP sweep


# Cameras fire as the lidar sweeps past them, hence the small staggered offsets (as in nuScenes).
CAMERAS: tuple[SensorSpec, ...] = (
    SensorSpec("CAM_FRONT_LEFT", "camera", (1.52, 0.49, 1.51), 55.0,
               (1272.6, 1272.6, 826.6, 479.8), 4_000),
    SensorSpec("CAM_FRONT", "camera", (1.70, 0.02, 1.51), 0.0,
               (1266.4, 1266.4, 816.3, 491.5), 12_000),
    SensorSpec("CAM_FRONT_RIGHT", "camera", (1.55, -0.49, 1.50), -55.0,
               (1260.8, 1260.8, 807.9, 495.3), 20_000),
    SensorSpec("CAM_BACK_LEFT", "camera", (1.04, 0.48, 1.59), 110.0,
               (1256.7, 1256.7, 817.8, 451.9), 45_000),
    SensorSpec("CAM_BACK", "camera", (0.03, 0.00, 1.58), 180.0,
               (809.2, 809.2, 829.2, 481.8), 37_000),
    SensorSpec("CAM_BACK_RIGHT", "camera", (1.01, -0.48, 1.56), -110.0,
               (1259.5, 1259.5, 807.3, 501.2), 29_000),
)
RADARS: tuple[SensorSpec, ...] = (
    SensorSpec("RADAR_FRONT", "radar", (3.41, 0.00, 0.50), 0.0),
    SensorSpec("RADAR_FRONT_LEFT", "radar", (2.42, 0.80, 0.78), 88.0),
    SensorSpec("RADAR_FRONT_RIGHT", "radar", (2.42, -0.80, 0.77), -88.0),
    SensorSpec("RADAR_BACK_LEFT", "radar", (-0.56, 0.63, 0.53), 176.0),
    SensorSpec("RADAR_BACK_RIGHT", "radar", (-0.56, -0.63, 0.53), -176.0),
)
LIDAR = SensorSpec("LIDAR_TOP", "lidar", (0.94, 0.00, 1.84), -90.0)
ALL_SENSORS: tuple[SensorSpec, ...] = CAMERAS + RADARS + (LIDAR,)

RADAR_HALF_FOV_DEG = 60.0  # short-range beam of the Continental ARS408
RADAR_MAX_RANGE_M = 100.0


@dataclass(frozen=True)
class Calibration:
    """A calibrated_sensor record's payload: ego_T_sensor as translation + quaternion
    (w, x, y, z)."""

    translation_ego: tuple[float, float, float]
    quat_wxyz: tuple[float, float, float, float]
    camera_intrinsic: tuple[tuple[float, float, float], ...] | None  # 3x3 K, None for non-cameras

    def ego_T_sensor(self) -> np.ndarray:
        """4x4 matrix mapping sensor-frame points to the ego frame (the devkit's own reading)."""
        ego_T_sensor = Quaternion(self.quat_wxyz).transformation_matrix
        ego_T_sensor[:3, 3] = self.translation_ego
        return ego_T_sensor


def _sensor_rotation(spec: SensorSpec, pitch_rad: float, roll_rad: float,
                     yaw_jitter_rad: float) -> Quaternion:
    yaw = Quaternion(axis=[0.0, 0.0, 1.0], angle=np.deg2rad(spec.yaw_deg) + yaw_jitter_rad)
    # Mounting error: small pitch (about ego y) and roll (about ego x) applied before the yaw.
    tilt = (Quaternion(axis=[0.0, 1.0, 0.0], angle=pitch_rad)
            * Quaternion(axis=[1.0, 0.0, 0.0], angle=roll_rad))
    rot = yaw * tilt
    if spec.modality == "camera":
        rot = rot * Quaternion(matrix=EGO_R_OPTICAL)
    return rot


def calibrate(rng: np.random.Generator) -> dict[str, Calibration]:
    """Per-log calibrations: the nominal rig plus mounting jitter (~1 cm, ~0.3 deg), as each
    nuScenes log carries its own calibrated_sensor records."""
    calibrations: dict[str, Calibration] = {}
    for spec in ALL_SENSORS:
        d_xyz = rng.normal(0.0, 0.01, 3)
        pitch, roll, d_yaw = rng.normal(0.0, np.deg2rad(0.3), 3)
        rot = _sensor_rotation(spec, pitch, roll, d_yaw)
        quat = rot.q if rot.q[0] >= 0 else -rot.q  # canonical sign: w >= 0
        K = None
        if spec.intrinsics is not None:
            fx, fy, cx, cy = spec.intrinsics
            K = ((fx, 0.0, cx), (0.0, fy, cy), (0.0, 0.0, 1.0))
        calibrations[spec.channel] = Calibration(
            translation_ego=tuple(float(v) for v in np.asarray(spec.translation_ego) + d_xyz),
            quat_wxyz=tuple(float(v) for v in quat),
            camera_intrinsic=K,
        )
    return calibrations
