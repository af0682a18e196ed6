"""The rig calibration file: what a deployed model needs to know about a vehicle's cameras.

A small YAML (or JSON, by the file's suffix) file, one entry per camera in `input.cameras`
order, for the RAW images the cameras deliver (before any resize):

    format: simplebev-calibration
    version: 1
    cameras:
    - name: CAM_FRONT
      width: 1600                 # raw image size, pixels
      height: 900
      fx: 1266.4                  # raw intrinsics, pixels
      fy: 1266.4
      cx: 816.3
      cy: 491.5
      ego_T_cam: [[...4 rows of 4...]]                        # camera optical frame -> ego
      # or: ego_T_cam: {translation: [x, y, z], quat_wxyz: [w, x, y, z]}
    hash: 5d41...                 # written by `save`; checked by `load` when present

The ROS node writes it from CameraInfo + TF, tests from a nuScenes (or synthetic) sample
record. `model_inputs` turns it into the model's pix_T_cams / ref_T_cams at the network input
size with the very functions the training loader uses, so a deployed model sees the geometry
it was trained with. The hash identifies a calibration: an exported model records the hash it
was built for, and a different calibration is refused.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import yaml
from torch import Tensor

from .config import SimpleBevConfig
from .geometry import intrinsics_matrix, pose_to_matrix
from .preprocess import ResizeCrop, ref_T_cams_from_ego, resize_crop_intrinsics

FORMAT_NAME = "simplebev-calibration"
FORMAT_VERSION = 1
RIGID_TOLERANCE = 1e-4  # how far from a rotation an ego_T_cam's 3x3 block may be


class CalibrationError(ValueError):
    """A calibration file is missing, malformed, or does not fit the configuration."""


@dataclass(frozen=True)
class CameraCalibration:
    """One camera: raw image size, raw pinhole intrinsics, and its pose on the vehicle.

    ego_T_cam: 4x4 row-major nested tuple of floats, camera optical frame -> ego frame.
    """

    name: str
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    ego_T_cam: tuple[tuple[float, ...], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "width": self.width, "height": self.height, "fx": self.fx,
                "fy": self.fy, "cx": self.cx, "cy": self.cy,
                "ego_T_cam": [list(row) for row in self.ego_T_cam]}


@dataclass(frozen=True)
class RigCalibration:
    """All cameras of a rig, in the model's camera order."""

    cameras: tuple[CameraCalibration, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.cameras)

    @property
    def hash(self) -> str:
        """sha256 of the canonical JSON of the cameras (floats written exactly, via repr)."""
        cameras = [c.to_dict() for c in self.cameras]
        text = json.dumps(cameras, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION,
                "cameras": [c.to_dict() for c in self.cameras], "hash": self.hash}


# ----------------------------------------------------------------------------- construction


def from_matrices(names: Sequence[str], raw_hw: Sequence[tuple[int, int]], pix_T_cams: Tensor,
                  ego_T_cams: Tensor) -> RigCalibration:
    """Calibration from tensors.

    names (S,), raw_hw S x (height, width), pix_T_cams (S, 4, 4) raw intrinsics,
    ego_T_cams (S, 4, 4) camera optical frame -> ego.
    """
    S = len(names)
    shapes = (tuple(pix_T_cams.shape), tuple(ego_T_cams.shape))
    if len(raw_hw) != S or shapes != ((S, 4, 4), (S, 4, 4)):
        raise CalibrationError(f"calibration: {S} names need {S} image sizes and (S,4,4) "
                               f"matrices, got {len(raw_hw)}, {shapes[0]} and {shapes[1]}")
    cameras = []
    for s, name in enumerate(names):
        K, T = pix_T_cams[s].double(), ego_T_cams[s].double()
        cameras.append(_camera({
            "name": name, "height": int(raw_hw[s][0]), "width": int(raw_hw[s][1]),
            "fx": float(K[0, 0]), "fy": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]),
            "ego_T_cam": T.tolist()}, f"cameras[{s}]"))
    return _rig(cameras)


def from_sample_record(record: Any, cameras: Sequence[str]) -> RigCalibration:
    """Calibration of one nuScenes (or synthetic) sample record.

    `record` is anything with the camera attributes of training.nuscenes_data.FrameRecord:
    raw_hw (S x (height, width)), pix_T_cams (S, 4, 4) raw intrinsics and ego_T_cams (S, 4, 4)
    camera -> the frame's ego frame, in `cameras` order. With input.camera_poses 'static' those
    are the rig's calibration; with 'capture_time' they include that frame's ego motion.
    """
    for attr in ("raw_hw", "pix_T_cams", "ego_T_cams"):
        if not hasattr(record, attr):
            raise CalibrationError(f"sample record {type(record).__name__} has no '{attr}'")
    return from_matrices(cameras, record.raw_hw, record.pix_T_cams, record.ego_T_cams)


# ----------------------------------------------------------------------------- model inputs


def model_inputs(calibration: RigCalibration, cfg: SimpleBevConfig) -> tuple[Tensor, Tensor]:
    """The model's geometry for this rig at the network input size, as the loader computes it.

    Returns pix_T_cams (S, 4, 4) at (input.image_height, input.image_width) and
    ref_T_cams (S, 4, 4) with ref = input.ref_camera, both float32.
    """
    check_cameras(calibration, cfg)
    final_hw = (cfg.input.image_height, cfg.input.image_width)
    half_pixel = cfg.model.pixel_convention == "exact"
    pix, ego = [], []
    for cam in calibration.cameras:
        K = intrinsics_matrix(cam.fx, cam.fy, cam.cx, cam.cy)
        raw_hw = (cam.height, cam.width)
        pix.append(resize_crop_intrinsics(K, raw_hw, ResizeCrop.plain(final_hw), half_pixel))
        # float32 before composing, as the loader does.
        ego.append(torch.tensor(cam.ego_T_cam, dtype=torch.float64).float())
    ref_index = cfg.input.cameras.index(cfg.input.ref_camera)
    return torch.stack(pix), ref_T_cams_from_ego(torch.stack(ego), ref_index)


def check_cameras(calibration: RigCalibration, cfg: SimpleBevConfig) -> None:
    """Raise CalibrationError unless the calibration lists exactly input.cameras, in order."""
    if calibration.names != tuple(cfg.input.cameras):
        raise CalibrationError(f"calibration cameras {list(calibration.names)} do not match "
                               f"input.cameras {list(cfg.input.cameras)} (same names, same order)")


# ----------------------------------------------------------------------------- files


def save(calibration: RigCalibration, path: str | Path) -> Path:
    """Write YAML (or JSON for a .json suffix), hash included."""
    path = Path(path)
    data = calibration.to_dict()
    if path.suffix.lower() == ".json":
        text = json.dumps(data, indent=2) + "\n"
    else:
        text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load(path: str | Path) -> RigCalibration:
    """Read and validate a calibration file; a stored hash must match the contents."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"calibration file '{path}' does not exist")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as e:
        raise CalibrationError(f"calibration file '{path}' cannot be parsed: {e}") from e
    try:
        calibration = from_dict(data)
    except CalibrationError as e:
        raise CalibrationError(f"calibration file '{path}': {e}") from None
    stored = data.get("hash")
    if stored is not None and stored != calibration.hash:
        raise CalibrationError(f"calibration file '{path}': stored hash {stored} does not match "
                               f"its contents ({calibration.hash}); it was edited after it was "
                               "written (re-save it, or delete the hash line)")
    return calibration


def from_dict(data: Any) -> RigCalibration:
    """Nested dict (the file's contents) -> validated RigCalibration."""
    if not isinstance(data, Mapping):
        raise CalibrationError("expected a mapping with a 'cameras' list, got "
                               f"{type(data).__name__}")
    if data.get("format", FORMAT_NAME) != FORMAT_NAME:
        raise CalibrationError(f"'format' is '{data.get('format')}', expected '{FORMAT_NAME}'")
    if data.get("version", FORMAT_VERSION) != FORMAT_VERSION:
        raise CalibrationError(f"'version' {data.get('version')} is not supported "
                               f"(expected {FORMAT_VERSION})")
    cams = data.get("cameras")
    if not isinstance(cams, list) or not cams:
        raise CalibrationError("'cameras' must be a non-empty list")
    return _rig([_camera(c, f"cameras[{i}]") for i, c in enumerate(cams)])


def _rig(cameras: list[CameraCalibration]) -> RigCalibration:
    names = [c.name for c in cameras]
    if len(set(names)) != len(names):
        raise CalibrationError(f"camera names must be unique, got {names}")
    return RigCalibration(tuple(cameras))


def _camera(d: Any, where: str) -> CameraCalibration:
    if not isinstance(d, Mapping):
        raise CalibrationError(f"'{where}' must be a mapping")
    known = {"name", "width", "height", "fx", "fy", "cx", "cy", "ego_T_cam"}
    missing, unknown = sorted(known - set(d)), sorted(set(d) - known)
    if missing or unknown:
        raise CalibrationError(f"'{where}': missing keys {missing}, unknown keys {unknown}")
    if not isinstance(d["name"], str) or not d["name"]:
        raise CalibrationError(f"'{where}.name' must be a non-empty string")
    for key in ("width", "height"):
        if not isinstance(d[key], int) or isinstance(d[key], bool) or d[key] <= 0:
            raise CalibrationError(f"'{where}.{key}' must be a positive integer, got {d[key]!r}")
    for key in ("fx", "fy", "cx", "cy"):
        if not _is_number(d[key]) or (key in ("fx", "fy") and d[key] <= 0):
            bound = " > 0" if key in ("fx", "fy") else ""
            raise CalibrationError(f"'{where}.{key}' must be a finite number{bound}, "
                                   f"got {d[key]!r}")
    return CameraCalibration(name=d["name"], width=d["width"], height=d["height"],
                             fx=float(d["fx"]), fy=float(d["fy"]),
                             cx=float(d["cx"]), cy=float(d["cy"]),
                             ego_T_cam=_rigid(d["ego_T_cam"], f"{where}.ego_T_cam"))


def _rigid(value: Any, where: str) -> tuple[tuple[float, ...], ...]:
    """A 4x4 matrix, or {translation, quat_wxyz}, -> a checked rigid 4x4 as nested tuples."""
    if isinstance(value, Mapping):
        t, q = value.get("translation"), value.get("quat_wxyz")
        if set(value) != {"translation", "quat_wxyz"} or not _numbers(t, 3) or not _numbers(q, 4):
            raise CalibrationError(f"'{where}' as a mapping needs exactly translation [x, y, z] "
                                   f"and quat_wxyz [w, x, y, z], got {dict(value)}")
        if math.sqrt(sum(v * v for v in q)) < 1e-6:
            raise CalibrationError(f"'{where}.quat_wxyz' is zero")
        T = pose_to_matrix(torch.tensor(t, dtype=torch.float64),
                           torch.tensor(q, dtype=torch.float64))
    else:
        if not (isinstance(value, list) and len(value) == 4
                and all(_numbers(row, 4) for row in value)):
            raise CalibrationError(f"'{where}' must be a 4x4 list of numbers or "
                                   "{translation, quat_wxyz}")
        T = torch.tensor(value, dtype=torch.float64)
    R = T[:3, :3]
    orthonormal = torch.allclose(R @ R.T, torch.eye(3, dtype=torch.float64), atol=RIGID_TOLERANCE)
    last_row = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    if not orthonormal or torch.det(R) < 0 or not torch.equal(T[3], last_row):
        raise CalibrationError(f"'{where}' is not a rigid transform (rotation block not "
                               "orthonormal with det +1, or last row not [0, 0, 0, 1])")
    return tuple(tuple(float(v) for v in row) for row in T.tolist())


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _numbers(v: Any, n: int) -> bool:
    return isinstance(v, list) and len(v) == n and all(_is_number(x) for x in v)
