"""The ground truth a converted bag carries for scoring the node: the one definition that the
writer (training.nuscenes_to_bag) and the reader (simplebev_ros.evaluate) share.

At each keyframe, stamped with the frame stamp the node uses (the reference camera's capture
time), an OccupancyGrid on TOPIC in the ego frame (base_link), on the grid the node publishes
(the model's BEV grid mapped by simplebev_core.bev_grid.BevToBase), one int8 code per cell:
VEHICLE, FREE, IGNORED (a barely visible vehicle, which training's valid mask leaves out of the
loss and the metric) or OUTSIDE (no cell of the model's grid there: it counts nowhere). The
vehicle boxes go on ANNOTATION_TOPIC as a MarkerArray.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .bev_grid import BevToBase

TOPIC = "/bev/ground_truth"
ANNOTATION_TOPIC = "/markers/annotations"
# Occupancy-like values, so the grid also reads sensibly in RViz: IGNORED shows half occupied.
VEHICLE, FREE, IGNORED, OUTSIDE = 100, 0, 50, -1


def encode(seg: Tensor, valid: Tensor, mapping: BevToBase) -> np.ndarray:
    """Training targets on the model's BEV grid (seg, valid: (Z, X), as simplebev_core.sample.
    Targets holds them without the channel) -> the (height, width) int8 codes on the base grid.
    valid is 0 only inside barely visible vehicles, so a free cell is always valid."""
    codes = torch.where(seg > 0, torch.where(valid > 0, VEHICLE, IGNORED), FREE).float()
    return mapping.resample(codes, fill=OUTSIDE).to(torch.int8).cpu().numpy()


@dataclass(frozen=True)
class GroundTruthMasks:
    """What the metric (simplebev_core.metrics.IouAccumulator.update_binary) takes, decoded
    from the codes; each the codes' shape and kind (numpy array or torch tensor) of bool."""

    vehicle: Any  # every vehicle, visible or not (the metric's seg)
    valid: Any  # not a barely visible vehicle (the visibility filter)
    inside: Any  # on the model's grid


def decode(codes: Any) -> GroundTruthMasks:
    """int codes (numpy array or torch tensor) -> the masks the metric takes."""
    return GroundTruthMasks(vehicle=(codes == VEHICLE) | (codes == IGNORED),
                            valid=codes != IGNORED, inside=codes != OUTSIDE)
