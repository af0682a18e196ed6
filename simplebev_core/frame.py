"""One multi-camera frame as a data source delivers it -> the `Sample` the model is fed.

The nuScenes loader (training/) and the ROS node (simplebev_ros/) both describe what they have
as a `RawFrame` (encoded or decoded images, raw intrinsics, per-camera extrinsics into the
frame's ego frame, accumulated radar points) and call `assemble`: decoding, resize/crop,
intrinsics, reference-frame extrinsics and the radar volume happen here once, so the node
feeds the model exactly what training did.

Camera extrinsics and ego motion (`input.camera_poses`): the six cameras of a rig fire at
slightly different times (nuScenes: spread over ~0.05 s, up to ~0.7 m of travel at 50 km/h).
- `capture_time`: each camera's pose at its own capture time, expressed in the ego frame at the
  frame stamp (ego_T_world @ world_T_ego(t_cam) @ ego_T_cam). Geometrically right on a moving
  vehicle; the extrinsics change every frame, so the node runs the lift without its cached
  lookup table. The project's default, and what the loader always did.
- `static`: the rig calibration (ego_T_cam) alone, all cameras treated as one instant, as
  upstream trained its released checkpoints. Constant extrinsics: the node caches the lift's
  lookup table (`LiftTable`) for the rig and reuses it every frame.
Sources build `ego_T_cam` according to this key; `assemble` uses what it is given.

`data.compat` (docs/training.md, "Upstream-compatible data mode"): under 'upstream' `assemble`
decodes every image at full size and resizes it with PIL's bicubic filter, feeds radar
velocities in each radar's own frame, drops radar points within upstream's 2.2 m square around
their sensor, and voxelises radar with upstream's last-write rule; the config then requires
input.camera_poses 'static'. Both data sources get this from the config alone.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from .config import CAMERA_POSES, SimpleBevConfig  # noqa: F401 (re-exported)
from .geometry import invert_rigid
from .image_decode import decode_image, decode_images_full, reduced_factor
from .preprocess import ResizeCrop, ref_T_cams_from_ego, resize_crop_image, resize_crop_intrinsics
from .radar import RadarPoints, radar_input
from .sample import Sample
from .voxel import VoxelGrid


@dataclass
class CameraInput:
    """One camera of a frame.

    image:     encoded JPEG/PNG bytes, or a decoded (3, H, W) uint8 RGB tensor at the raw size,
               or None when the camera is missing (fed as a black image)
    raw_hw:    (H, W) of the raw image, which `pix_T_cam` refers to
    pix_T_cam: (4, 4) intrinsics of the raw image
    ego_T_cam: (4, 4) camera optical frame -> the frame's ego frame (see input.camera_poses)
    stamp_ns:  capture time, integer nanoseconds
    origin:    where the image came from (a file path, a topic), for error messages
    channel_order: how encoded `image` bytes decode (image_decode.decode_image): "bgr" for
               JPEG/PNG files (OpenCV's order), "rgb" for image_transport's "rgb8; jpeg
               compressed rgb8"; a decoded tensor is always RGB
    """

    image: bytes | Tensor | None
    raw_hw: tuple[int, int]
    pix_T_cam: Tensor
    ego_T_cam: Tensor
    stamp_ns: int = 0
    origin: str = "image"
    channel_order: str = "bgr"


@dataclass
class RawFrame:
    """Everything the model needs from one moment, before any preprocessing.

    cameras:  CameraInput per name in `names` (the config's input.cameras order)
    radar:    accumulated radar points in the ego frame, or None (camera-only)
    stamp_ns: the frame's stamp, integer nanoseconds (the ego frame is the vehicle at this time)
    """

    names: tuple[str, ...]
    cameras: list[CameraInput]
    radar: RadarPoints | None = None
    stamp_ns: int = 0
    token: str = ""


@dataclass(frozen=True)
class AssemblyPlan:
    """Per-frame choices: reference camera slot, per-camera resize-crop, cameras blanked, and
    how JPEGs are decoded (`decode_frame` has no config): `decode_device` None decodes with
    OpenCV (input.decode cpu), DCT-reduced when `reduced_decode` (False for data.compat
    'upstream', which decodes at full size as PIL did); a device decodes with torchvision's
    decoder at full size there (input.decode cuda; `decode_device`)."""

    ref_index: int
    resize_crops: tuple[ResizeCrop, ...]
    dropped: tuple[bool, ...] = field(default=())
    reduced_decode: bool = True
    decode_device: str | None = None

    @staticmethod
    def plain(cfg: SimpleBevConfig, device: torch.device | str = "cpu") -> "AssemblyPlan":
        """Evaluation and inference: the configured reference camera, plain resize, no dropout;
        `device`: where input.decode cuda decodes (the node's device)."""
        cams = cfg.input.cameras
        final_hw = (cfg.input.image_height, cfg.input.image_width)
        return AssemblyPlan(cams.index(cfg.input.ref_camera),
                            (ResizeCrop.plain(final_hw),) * len(cams), (False,) * len(cams),
                            reduced_decode=reduced_decode(cfg),
                            decode_device=decode_device(cfg, device))


def reduced_decode(cfg: SimpleBevConfig) -> bool:
    """Whether images may be decoded DCT-reduced under the config's data.compat."""
    return cfg.data.compat == "project"


def decode_device(cfg: SimpleBevConfig, device: torch.device | str = "cpu") -> str | None:
    """The plan's decode_device under input.decode: None for cpu (OpenCV); for cuda, `device`
    (the node's CUDA device; the training loader's workers pass the CPU)."""
    return None if cfg.input.decode == "cpu" else str(device)


def image_resampling(cfg: SimpleBevConfig) -> str:
    """The resize filter (preprocess.RESAMPLING) under the config's data.compat."""
    return "pil_bicubic" if cfg.data.compat == "upstream" else "antialiased_bilinear"


def moving_sensor_pose(ego_T_world: Tensor, world_T_egosensor: Tensor, egosensor_T_sensor: Tensor
                       ) -> Tensor:
    """A sensor at its capture time -> the frame's ego frame: ego_T_world (the vehicle at the
    frame stamp), world_T_egosensor (the vehicle at the sensor's capture time), and the
    sensor's calibration. Both data sources compose poses here, in float64, in this order."""
    return ego_T_world @ world_T_egosensor @ egosensor_T_sensor


def _decode_target_hw(cam: CameraInput, rc: ResizeCrop, reduced: bool) -> tuple[int, int]:
    """The size `decode_image` may reduce to: the resize target, or the raw size (no DCT
    reduction) when `reduced` is False."""
    return tuple(rc.resized_hw) if reduced else tuple(cam.raw_hw)


def source_image(cam: CameraInput, rc: ResizeCrop, reduced: bool = True) -> Tensor | None:
    """One camera's decoded (3, h, w) uint8 image before the resize-crop (None: missing).
    reduced: JPEGs may be decoded DCT-reduced."""
    if cam.image is None:
        return None
    target_hw = _decode_target_hw(cam, rc, reduced)
    if not isinstance(cam.image, Tensor):
        return decode_image(cam.image, cam.raw_hw, target_hw, cam.origin, cam.channel_order)
    f = reduced_factor(cam.raw_hw, target_hw)
    allowed = {(3,) + tuple(cam.raw_hw), (3, cam.raw_hw[0] // f, cam.raw_hw[1] // f)}
    if tuple(cam.image.shape) not in allowed:
        raise ValueError(f"{cam.origin}: image of shape {tuple(cam.image.shape)} for raw size "
                         f"{cam.raw_hw} (image size changed, CameraInfo does not match, or "
                         f"decoded for another data.compat)")
    return cam.image


def camera_image(cam: CameraInput, rc: ResizeCrop, reduced: bool = True,
                 resample: str = "antialiased_bilinear") -> Tensor:
    """One camera's (3, H, W) float32 network input in [0, 1] under a resize-crop.
    reduced: JPEGs may be decoded DCT-reduced; resample: preprocess.RESAMPLING."""
    return camera_images([cam], [rc], reduced, resample)[0]


def camera_images(cams: Sequence[CameraInput], rcs: Sequence[ResizeCrop], reduced: bool = True,
                  resample: str = "antialiased_bilinear") -> list[Tensor]:
    """`camera_image` of every camera; cameras whose images share a size, type and resize-crop
    (a rig at inference) are resized in one batched call, which gives the same values."""
    sources = [source_image(cam, rc, reduced) for cam, rc in zip(cams, rcs)]
    images: list[Tensor | None] = [None] * len(cams)
    groups: dict[tuple, list[int]] = {}
    # Images decoded on a GPU stay there; a missing camera's black image joins them.
    device = next((src.device for src in sources if src is not None), torch.device("cpu"))
    for s, (src, rc) in enumerate(zip(sources, rcs)):
        if src is None:
            images[s] = torch.zeros((3,) + tuple(rc.final_hw), dtype=torch.float32,
                                    device=device)
        else:
            groups.setdefault((tuple(src.shape), src.dtype, rc), []).append(s)
    for (_, _, rc), members in groups.items():
        batch = torch.stack([sources[s] for s in members])
        for s, image in zip(members, resize_crop_image(batch, rc, resample)):
            images[s] = image
    return images


def decode_frame(frame: RawFrame, plan: AssemblyPlan,
                 map_fn: Callable[..., Iterable] = map) -> RawFrame:
    """The frame with every encoded image decoded as `assemble` would decode it (DCT-scaled
    to the plan's resize), so a caller can time decoding on its own; `assemble` of the result
    equals `assemble` of the input. `map_fn` (e.g. a thread pool's `map`) decodes the cameras
    concurrently."""
    def decoded(s: int, cam: CameraInput) -> CameraInput:
        target_hw = _decode_target_hw(cam, plan.resize_crops[s], plan.reduced_decode)
        image = decode_image(cam.image, cam.raw_hw, target_hw, cam.origin, cam.channel_order)
        return dataclasses.replace(cam, image=image)

    def maybe_decoded(s: int, cam: CameraInput) -> CameraInput:
        return decoded(s, cam) if _encoded(cam) else cam

    if plan.decode_device is not None:
        return _decode_frame_full(frame, plan.decode_device)
    cameras = list(map_fn(maybe_decoded, range(len(frame.cameras)), frame.cameras))
    return dataclasses.replace(frame, cameras=cameras)


def _encoded(cam: CameraInput) -> bool:
    return isinstance(cam.image, (bytes, bytearray, memoryview))


def _decode_frame_full(frame: RawFrame, device: str) -> RawFrame:
    """`decode_frame` under input.decode cuda: every encoded image at full size on `device`,
    in one call (image_decode.decode_images_full)."""
    todo = [s for s, cam in enumerate(frame.cameras) if _encoded(cam)]
    cams = [frame.cameras[s] for s in todo]
    images = decode_images_full([c.image for c in cams], [c.raw_hw for c in cams], device,
                                [c.origin for c in cams], [c.channel_order for c in cams])
    cameras = list(frame.cameras)
    for s, image in zip(todo, images):
        cameras[s] = dataclasses.replace(cameras[s], image=image)
    return dataclasses.replace(frame, cameras=cameras)


def assemble(frame: RawFrame, cfg: SimpleBevConfig, plan: AssemblyPlan | None = None,
             grid: VoxelGrid | None = None) -> Sample:
    """RawFrame -> Sample (without targets) under `plan` (default: `AssemblyPlan.plain`)."""
    plan = plan or AssemblyPlan.plain(cfg)
    if tuple(frame.names) != tuple(cfg.input.cameras):
        raise ValueError(f"frame cameras {list(frame.names)} differ from input.cameras "
                         f"{list(cfg.input.cameras)}")
    half_pixel = cfg.model.pixel_convention == "exact"
    dropped = plan.dropped or (False,) * len(frame.cameras)
    reduced, resample = reduced_decode(cfg), image_resampling(cfg)
    if plan.decode_device is not None:
        frame = decode_frame(frame, plan)  # all of the frame's JPEGs in one call
    images = camera_images(frame.cameras, plan.resize_crops, reduced, resample)
    images = [torch.zeros_like(image) if drop else image for image, drop in zip(images, dropped)]
    Ks = [resize_crop_intrinsics(cam.pix_T_cam.float(), cam.raw_hw, rc, half_pixel)
          for cam, rc in zip(frame.cameras, plan.resize_crops)]
    ego_T_cams = torch.stack([cam.ego_T_cam.float() for cam in frame.cameras])
    radar = None
    if cfg.model.radar != "none":
        points = frame.radar if frame.radar is not None else RadarPoints.empty()
        ref_T_ego = invert_rigid(ego_T_cams[plan.ref_index])
        radar = radar_input(cfg.model.radar, points, ref_T_ego, grid or VoxelGrid(cfg.grid),
                            cfg.data.compat)
    return Sample(
        images=torch.stack(images), pix_T_cams=torch.stack(Ks),
        ref_T_cams=ref_T_cams_from_ego(ego_T_cams, plan.ref_index), radar=radar,
        token=frame.token, cameras=tuple(frame.names), ref_camera=frame.names[plan.ref_index],
        stamp_ns=frame.stamp_ns,
    )


def stack_ego_T_cams(frame: RawFrame) -> np.ndarray:
    """(S, 4, 4) float64 ego_T_cams of a frame (e.g. to key a cached lift table)."""
    return np.stack([cam.ego_T_cam.double().numpy() for cam in frame.cameras])
