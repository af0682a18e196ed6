"""Tiny configs and rig calibrations for the deployment tests (export, backends, calibration)."""
from __future__ import annotations

import torch

from simplebev_core import load_config
from simplebev_core.calibration import RigCalibration, from_matrices

from .helpers import TINY as HELPERS_TINY
from .rigs import nuscenes_like_rig

RAW_HW = (90, 160)  # raw camera images; the network input is 48x80 (a non-uniform resize)
# The core tests' tiny model (helpers.TINY) with the six nuScenes cameras (the default
# input.cameras) at 48x80.
TINY = {**{k: v for k, v in HELPERS_TINY.items() if not k.startswith("input.")},
        "input.image_height": 48, "input.image_width": 80}

# Ego (x forward, y left, z up) from the front camera's optical frame (X right, Y down, Z
# forward), the camera 1.5 m above the ego origin and 1 m ahead of it.
EGO_T_FRONT = torch.tensor([[0.0, 0.0, 1.0, 1.0],
                            [-1.0, 0.0, 0.0, 0.0],
                            [0.0, -1.0, 0.0, 1.5],
                            [0.0, 0.0, 0.0, 1.0]])


def tiny_cfg(**extra):
    return load_config(overrides={**TINY, **extra})


def tiny_calibration(cfg, shift_m: float = 0.0) -> RigCalibration:
    """The cameras of `cfg` on a nuScenes-like ring; shift_m moves the first camera sideways."""
    yaws = (55.0, 0.0, -55.0, 110.0, 180.0, -110.0)[:len(cfg.input.cameras)]
    H, W = RAW_HW
    pix_T_cams, front_T_cams = nuscenes_like_rig(H, W, yaws_deg=yaws)
    ego_T_cams = EGO_T_FRONT @ front_T_cams
    ego_T_cams[0, 1, 3] += shift_m
    return from_matrices(cfg.input.cameras, [RAW_HW] * len(yaws), pix_T_cams, ego_T_cams)
