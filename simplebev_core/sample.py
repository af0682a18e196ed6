"""`Sample` and `Batch`: the one data contract between data sources (nuScenes loader, ROS node)
and the model. Named fields, never positional tuples.

Shapes: S cameras, H W input pixels, Z Y X voxel axes of the grid (Z forward, Y down, X right in
the reference camera's optical frame). BEV maps are (Z, X): row 0 is the grid's far-back edge,
column 0 its left edge.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Sequence

import torch
from torch import Tensor

from .config import RADAR_MODES
from .radar import radar_channels

# Radar channel counts a Sample may carry: it does not know the model's radar mode, so any mode's
# count is accepted here and the model checks the one it takes.
RADAR_INPUT_CHANNELS = frozenset(radar_channels(mode) for mode in RADAR_MODES) - {0}


@dataclass
class Targets:
    """BEV training/evaluation targets.

    seg:    (1, Z, X) 1 inside a vehicle footprint, else 0
    valid:  (1, Z, X) 0 where the loss and the metric ignore the cell (barely visible vehicles)
    center: (1, Z, X) instance-centre heatmap in [0, 1]
    offset: (2, Z, X) (x, z) offsets 2 * (cell - centre) in cells inside footprints, else 0
    A Batch holds the same with a leading B.
    """

    seg: Tensor
    valid: Tensor
    center: Tensor
    offset: Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Targets":
        return Targets(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                          for f in fields(self)})


@dataclass
class Sample:
    """One multi-camera frame, ready for the model.

    images:     (S, 3, H, W) float32 RGB in [0, 1]
    pix_T_cams: (S, 4, 4) intrinsics in pixels of the (resized, cropped) images
    ref_T_cams: (S, 4, 4) camera optical frame -> reference frame
    radar:      (16, Z, Y, X) meta-radar, (1, Z, Y, X) occupancy, or None
    targets:    BEV targets (training/evaluation only)
    token:      a unique id (nuScenes sample token; the node may use the stamp)
    cameras:    camera names in slot order (slot i <-> images[i])
    ref_camera: the camera whose optical frame is the reference frame
    stamp_ns:   acquisition time, integer nanoseconds
    """

    images: Tensor
    pix_T_cams: Tensor
    ref_T_cams: Tensor
    radar: Tensor | None = None
    targets: Targets | None = None
    token: str = ""
    cameras: tuple[str, ...] = ()
    ref_camera: str = ""
    stamp_ns: int = 0

    def validate(self, grid_zyx: Sequence[int] | None = None) -> "Sample":
        """Check shapes and dtypes; raise ValueError naming the bad field. Returns self."""
        _check_frame(self, batched=False, grid_zyx=grid_zyx)
        return self


@dataclass
class Batch:
    """Samples stacked along a leading batch axis B (see Sample for the per-sample shapes)."""

    images: Tensor
    pix_T_cams: Tensor
    ref_T_cams: Tensor
    radar: Tensor | None = None
    targets: Targets | None = None
    tokens: list[str] = field(default_factory=list)
    cameras: list[tuple[str, ...]] = field(default_factory=list)
    ref_cameras: list[str] = field(default_factory=list)
    stamps_ns: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]

    def validate(self, grid_zyx: Sequence[int] | None = None) -> "Batch":
        _check_frame(self, batched=True, grid_zyx=grid_zyx)
        return self

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """Tensors moved to `device` (metadata shared)."""
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return replace(self, images=move(self.images), pix_T_cams=move(self.pix_T_cams),
                       ref_T_cams=move(self.ref_T_cams), radar=move(self.radar),
                       targets=(None if self.targets is None
                                else self.targets.to(device, non_blocking)))

    def pin_memory(self) -> "Batch":
        """Called by DataLoader(pin_memory=True) on custom batch types."""
        pin = lambda t: None if t is None else t.pin_memory()  # noqa: E731
        targets = None if self.targets is None else Targets(
            **{f.name: pin(getattr(self.targets, f.name)) for f in fields(Targets)})
        return replace(self, images=pin(self.images), pix_T_cams=pin(self.pix_T_cams),
                       ref_T_cams=pin(self.ref_T_cams), radar=pin(self.radar), targets=targets)


def collate(samples: Sequence[Sample]) -> Batch:
    """Stack Samples into a Batch. All samples must agree on S, H, W, the radar mode and whether
    targets are present."""
    if not samples:
        raise ValueError("collate: no samples")
    first = samples[0]
    for s in samples[1:]:
        if ((s.radar is None) != (first.radar is None)
                or (s.targets is None) != (first.targets is None)):
            raise ValueError(f"collate: sample '{s.token}' differs from '{first.token}' "
                             "in having radar/targets")
    stack = lambda name: torch.stack([getattr(s, name) for s in samples])  # noqa: E731
    targets = None
    if first.targets is not None:
        targets = Targets(**{f.name: torch.stack([getattr(s.targets, f.name) for s in samples])
                             for f in fields(Targets)})
    return Batch(
        images=stack("images"), pix_T_cams=stack("pix_T_cams"), ref_T_cams=stack("ref_T_cams"),
        radar=None if first.radar is None else stack("radar"), targets=targets,
        tokens=[s.token for s in samples], cameras=[s.cameras for s in samples],
        ref_cameras=[s.ref_camera for s in samples], stamps_ns=[s.stamp_ns for s in samples],
    )


def _check_frame(x: Sample | Batch, batched: bool, grid_zyx: Sequence[int] | None) -> None:
    lead = 1 if batched else 0
    where = type(x).__name__

    def fail(name: str, expected: str, t: Tensor) -> None:
        raise ValueError(f"{where}.{name}: expected {expected}, "
                         f"got shape {tuple(t.shape)} dtype {t.dtype}")

    b = "B, " if batched else ""
    imgs = x.images
    if imgs.dim() != 4 + lead or imgs.shape[lead + 1] != 3 or imgs.dtype != torch.float32:
        fail("images", f"float32 ({b}S, 3, H, W)", imgs)
    lead_shape = tuple(imgs.shape[:lead + 1])  # (B, S) or (S,)
    for name in ("pix_T_cams", "ref_T_cams"):
        t = getattr(x, name)
        if tuple(t.shape) != lead_shape + (4, 4) or not t.is_floating_point():
            fail(name, f"float {lead_shape + (4, 4)}", t)
    n_cams = imgs.shape[lead]
    names = [x.cameras] if not batched else x.cameras
    for cams in names:
        if cams and len(cams) != n_cams:
            raise ValueError(f"{where}.cameras: {len(cams)} names for {n_cams} images")
    zyx = tuple(grid_zyx) if grid_zyx is not None else None
    if x.radar is not None:
        r = x.radar
        if (r.dim() != 4 + lead or r.shape[lead] not in RADAR_INPUT_CHANNELS
                or not r.is_floating_point()
                or (zyx is not None and tuple(r.shape[lead + 1:]) != zyx)):
            channels = " or ".join(str(c) for c in sorted(RADAR_INPUT_CHANNELS))
            fail("radar", f"float ({b}{channels}, Z, Y, X) with Z, Y, X = {zyx or 'grid'}", r)
    if x.targets is not None:
        zx = None if zyx is None else (zyx[0], zyx[2])
        for name, channels in (("seg", 1), ("valid", 1), ("center", 1), ("offset", 2)):
            t = getattr(x.targets, name)
            ok = t.dim() == 3 + lead and t.shape[lead] == channels and t.is_floating_point()
            if ok and zx is not None:
                ok = tuple(t.shape[lead + 1:]) == zx
            if ok and batched:
                ok = t.shape[0] == imgs.shape[0]
            if not ok:
                fail(f"targets.{name}",
                     f"float ({b}{channels}, Z, X) with Z, X = {zx or 'grid'}", t)
