"""Export the Segnet for one fixed rig calibration to ONNX, in standard ops only.

    python -m simplebev_core.export --checkpoint PATH --params-file config.yaml \
        --calibration rig.yaml --out model.onnx [--dtype fp32|fp16] [--radar] [--uint8-images]

Upstream's 5-D `grid_sample` lift does not export; for a static rig it does not need to. The
lift is the project's `LiftTable` (the sparse bilinear map of one calibration), re-laid as
constants: for each camera that sees a voxel, the feature pixels of the four bilinear corners
and their weights, already divided by the voxel's camera count (`GatherLift`). In the graph:
Gather the corner pixels, multiply by the weights and add; the first camera of every voxel
gives the volume directly, the overlaps of adjacent cameras add into it with Gather, Add and a
ScatterND without reduction. No custom op and no 5-D GridSample; InstanceNorm is the standard
InstanceNormalization. RepLK blocks are re-parameterised (fused) before export.

Graph inputs: `images` (B, S, 3, H, W) float in [0, 1] (or uint8 with --uint8-images) and,
for a radar model, `radar` (B, 16 or 1, Z, Y, X); outputs `segmentation` (B, 1, Z, X), `center`
(B, 1, Z, X), `offset` (B, 2, Z, X). The batch axis is dynamic. The file's metadata_props
record the calibration (and its hash), the config, the weights' hash and the dtype; loading it
against another calibration is refused (`check_calibration`).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .atomic import atomic_write
from .calibration import CalibrationError, RigCalibration, check_cameras, from_dict, model_inputs
from .calibration import load as load_calibration
from .checkpoint import CheckpointError, checkpoint_config, load_checkpoint, model_for_checkpoint
from .config import ConfigError, SimpleBevConfig, config_from_dict, config_to_dict, load_config
from .lift import LiftTable
from .model import Segnet
from .radar import radar_channels
from .replk import reparameterize_model

EXPORT_FORMAT = "simplebev-onnx"
EXPORT_VERSION = 1
OPSET = 17
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
OUTPUT_NAMES = ("segmentation", "center", "offset")
EXIT_USAGE = 2


class ExportError(RuntimeError):
    """The model cannot be exported as asked (inconsistent config, unsupported option)."""


class MissingPackageError(ImportError):
    """An optional deployment package (onnx, onnxruntime, openvino, tensorrt) is not installed."""


class CalibrationMismatchError(CalibrationError):
    """An exported model was built for another rig calibration than the one it is used with."""


def require(module: str, purpose: str) -> Any:
    """Import an optional package, or raise MissingPackageError saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingPackageError(f"{module} is not installed ({purpose} needs it): "
                                  f"pip install -e '.[deploy]' ({type(e).__name__}: {e})") from e


# ----------------------------------------------------------------------------- the lift


class GatherLift(nn.Module):
    """A LiftTable as gather-and-weight constants: feats (B, S, C, Hf, Wf) -> volume
    (B, C, Z, Y, X), equal to the table up to float rounding (summation order).

    The table's entries are grouped by "the g-th camera that sees the voxel" (in camera
    order). Group 0 holds every voxel, so it needs no scatter: its four corner gathers, each
    weighted, are the volume (a voxel no camera sees has weight 0). Each later group (voxels
    in the overlap of adjacent cameras) holds only its voxels and adds into the volume with a
    gather, an add and a plain ScatterND (unique indices within a group). Voxels are numbered
    (y, z, x) here, so the height fold that follows is a free reshape after one 2-D transpose.

    Buffers per group g: `pixels_g` (4, n) indices into the S*Hf*Wf feature pixels,
    `weights_g` (4, n, 1) (already divided by the voxel's camera count), and for g > 0
    `voxels_g` (n,) voxel indices; unused corner slots point at pixel 0 with weight 0.
    """

    def __init__(self, table: LiftTable):
        super().__init__()
        self.zyx = (table.grid.Z, table.grid.Y, table.grid.X)
        self.groups = 0
        for g, (voxels, pixels, weights) in enumerate(lift_groups(table)):
            self.groups += 1
            if g > 0:
                self.register_buffer(f"voxels_{g}", voxels)
            self.register_buffer(f"pixels_{g}", pixels)
            self.register_buffer(f"weights_{g}", weights[..., None])

    def forward(self, feats: Tensor) -> Tensor:
        B, S, C, Hf, Wf = feats.shape
        Z, Y, X = self.zyx
        dense = feats.permute(1, 3, 4, 0, 2).reshape(S * Hf * Wf, B * C)  # pixel-major
        volume = dense  # replaced by group 0, which always exists
        for g in range(self.groups):
            pixels, weights = getattr(self, f"pixels_{g}"), getattr(self, f"weights_{g}")
            values = dense.index_select(0, pixels[0]) * weights[0]  # (n, B*C)
            for k in range(1, 4):
                values = values + dense.index_select(0, pixels[k]) * weights[k]
            if g == 0:
                volume = values
            else:
                # index_put without accumulation exports as a plain ScatterND, which every
                # runtime (TensorRT included) supports.
                voxels = getattr(self, f"voxels_{g}")
                volume = volume.index_put((voxels,), volume.index_select(0, voxels) + values)
        return volume.t().reshape(B, C, Y, Z, X).transpose(2, 3)


def lift_groups(table: LiftTable) -> list[tuple[Tensor | None, Tensor, Tensor]]:
    """The table's non-zeros as (voxels, pixels (4, n) int64, weights (4, n) float32) per
    group g (the g-th camera seeing a voxel); voxels are (y, z, x)-numbered, None for group 0
    (which lists all Z*Y*X voxels in order)."""
    coo = table.weights.to_sparse_coo().coalesce().cpu()  # sorted by (voxel, pixel)
    rows, cols = coo.indices()
    vals = coo.values().float()
    Z, Y, X = table.grid.Z, table.grid.Y, table.grid.X
    S, per_cam = table.num_cameras, table.feat_hw[0] * table.feat_hw[1]
    z, y, x = rows // (Y * X), (rows // X) % Y, rows % X
    order = torch.sort((y * Z + z) * X + x, stable=True)  # pixel order kept within a voxel
    v, cols, vals = order.values, cols[order.indices], vals[order.indices]
    # Corner slot of each entry within its (voxel, camera) pair, group of each pair.
    pair_start, pair_size = _runs(v * S + cols // per_cam)
    slot = torch.arange(v.numel()) - torch.repeat_interleave(pair_start, pair_size)
    if v.numel() and int(slot.max()) > 3:
        raise ExportError("lift table: a voxel has more than 4 samples in one camera")
    voxel_start, voxel_size = _runs(v[pair_start])
    rank = torch.arange(pair_start.numel()) - torch.repeat_interleave(voxel_start, voxel_size)
    group = torch.repeat_interleave(rank, pair_size)
    out = []
    for g in range(int(group.max()) + 1 if v.numel() else 1):
        keep = group == g
        if g == 0:
            voxels, n, column = None, Z * Y * X, v[keep]
        else:
            voxels = torch.unique(v[keep])
            n, column = voxels.numel(), torch.searchsorted(voxels, v[keep])
        pixels = torch.zeros(4, n, dtype=torch.long)
        weights = torch.zeros(4, n, dtype=torch.float32)
        pixels[slot[keep], column], weights[slot[keep], column] = cols[keep], vals[keep]
        out.append((voxels, pixels, weights))
    return out


def _runs(keys: Tensor) -> tuple[Tensor, Tensor]:
    """Start index and length of each run of equal consecutive keys."""
    _, sizes = torch.unique_consecutive(keys, return_counts=True)
    return torch.cumsum(sizes, 0) - sizes, sizes


# ----------------------------------------------------------------------------- the network


class FixedRigSegnet(nn.Module):
    """The Segnet's inference path for one rig: forward(images[, radar]) -> (segmentation,
    center, offset). Mirrors Segnet.forward in eval mode with a lift table (tested equal).

    images (B, S, 3, H, W) float in [0, 1], or uint8 in [0, 255] with uint8_images.
    """

    def __init__(self, model: Segnet, lift: GatherLift, uint8_images: bool = False):
        super().__init__()
        self.model, self.lift, self.uint8_images = model, lift, uint8_images

    def forward(self, images: Tensor, radar: Tensor | None = None) -> tuple[Tensor, ...]:
        m = self.model
        x = images.to(m.mean.dtype) / 255.0 if self.uint8_images else images
        out = m.bev_head(self.lift(m.encode(x)), radar)
        return out.segmentation, out.center, out.offset


def fixed_rig_model(model: Segnet, cfg: SimpleBevConfig, calibration: RigCalibration,
                    dtype: str = "fp32", uint8_images: bool = False) -> FixedRigSegnet:
    """A re-parameterised eval-mode copy of `model` with the lift of `calibration` baked in
    (the caller's model is not modified)."""
    check_consistent(model, cfg)
    if dtype not in DTYPES:
        raise ExportError(f"dtype '{dtype}' is not one of {sorted(DTYPES)}")
    pix_T_cams, ref_T_cams = model_inputs(calibration, cfg)
    image_hw = (cfg.input.image_height, cfg.input.image_width)
    table = model.make_lift_table(pix_T_cams, ref_T_cams, image_hw)
    copied = copy.deepcopy(model).cpu().eval()
    reparameterize_model(copied)
    return FixedRigSegnet(copied, GatherLift(table), uint8_images).to(DTYPES[dtype]).eval()


def check_consistent(model: Segnet, cfg: SimpleBevConfig) -> None:
    """The config must describe the network the model is (model and grid sections)."""
    for section in ("model", "grid"):
        mine, theirs = getattr(model.cfg, section), getattr(cfg, section)
        if section == "model":  # whether ImageNet weights were loaded at construction is moot here
            mine = replace(mine, encoder_pretrained=False)
            theirs = replace(theirs, encoder_pretrained=False)
        if mine != theirs:
            raise ExportError(f"config section '{section}' differs from the one the model was "
                              "built with")


# ----------------------------------------------------------------------------- metadata


@dataclass(frozen=True)
class ExportMetadata:
    """What an exported file records about itself (ONNX metadata_props `simplebev.*`)."""

    calibration_hash: str
    calibration: dict
    config: dict
    model_hash: str
    dtype: str
    uint8_images: bool
    radar: str

    def to_props(self) -> dict[str, str]:
        return {"simplebev.format": EXPORT_FORMAT, "simplebev.version": str(EXPORT_VERSION),
                "simplebev.calibration_hash": self.calibration_hash,
                "simplebev.calibration": json.dumps(self.calibration),
                "simplebev.config": json.dumps(self.config),
                "simplebev.model_hash": self.model_hash, "simplebev.dtype": self.dtype,
                "simplebev.uint8_images": str(int(self.uint8_images)),
                "simplebev.radar": self.radar}

    @staticmethod
    def from_props(props: dict[str, str], where: str) -> "ExportMetadata":
        tag = (props.get("simplebev.format"), props.get("simplebev.version"))
        if tag != (EXPORT_FORMAT, str(EXPORT_VERSION)):
            raise ExportError(f"'{where}' is not a {EXPORT_FORMAT} v{EXPORT_VERSION} file (no or "
                              "other simplebev.* metadata); export it with "
                              "python -m simplebev_core.export")
        try:
            return ExportMetadata(
                calibration_hash=props["simplebev.calibration_hash"],
                calibration=json.loads(props["simplebev.calibration"]),
                config=json.loads(props["simplebev.config"]),
                model_hash=props["simplebev.model_hash"], dtype=props["simplebev.dtype"],
                uint8_images=props["simplebev.uint8_images"] == "1",
                radar=props["simplebev.radar"])
        except (KeyError, json.JSONDecodeError) as e:
            raise ExportError(f"'{where}': simplebev metadata incomplete or corrupt ({e})") \
                from None

    @property
    def cfg(self) -> SimpleBevConfig:
        return config_from_dict(self.config)

    @property
    def rig(self) -> RigCalibration:
        return from_dict(self.calibration)


def read_metadata(path: str | Path) -> ExportMetadata:
    """The simplebev metadata of an exported .onnx file."""
    onnx = require("onnx", "reading an exported model")
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"exported model '{path}' does not exist")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends: the file is torn or not ONNX
        raise ExportError(f"exported model '{path}' cannot be read as ONNX "
                          f"({type(e).__name__}: {e})") from e
    return ExportMetadata.from_props({p.key: p.value for p in proto.metadata_props}, str(path))


def check_calibration(meta: ExportMetadata, calibration: RigCalibration, where: str) -> None:
    """Refuse to use an exported model with a calibration other than the one it was built for."""
    if meta.calibration_hash != calibration.hash:
        raise CalibrationMismatchError(
            f"'{where}' was exported for calibration {meta.calibration_hash[:12]}, but this "
            f"rig's calibration is {calibration.hash[:12]}: the lift is baked into the file, so "
            "re-export it for this rig")


def model_hash(model: nn.Module) -> str:
    """sha256 over the state_dict (names, dtypes, shapes, bytes): identifies the weights."""
    h = hashlib.sha256()
    for name, t in sorted(getattr(model, "module", model).state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- export


def export_onnx(model: Segnet, cfg: SimpleBevConfig, calibration: RigCalibration, out: str | Path,
                dtype: str = "fp32", uint8_images: bool = False,
                weights_hash: str | None = None) -> ExportMetadata:
    """Write `model` for this rig to `out` (atomically) and return the metadata it records.

    `weights_hash` defaults to model_hash(model) (pass it when already known).
    """
    onnx = require("onnx", "exporting to ONNX")
    net = fixed_rig_model(model, cfg, calibration, dtype, uint8_images)
    meta = ExportMetadata(calibration_hash=calibration.hash, calibration=calibration.to_dict(),
                          config=config_to_dict(cfg), model_hash=weights_hash or model_hash(model),
                          dtype=dtype, uint8_images=uint8_images, radar=cfg.model.radar)
    args, input_names = example_inputs(cfg, dtype, uint8_images), ["images"]
    if len(args) == 2:
        input_names.append("radar")
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is the one that runs without onnxscript; it warns that a newer
        # one exists, and tracing warns about shape-derived Python ints (sizes are fixed here).
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based")
        warnings.filterwarnings("ignore", message="The feature will be removed",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # InstanceNorm without running statistics normalises by the input's own statistics in
        # eval mode too, which is what the exporter's "train=True" note says it does.
        warnings.filterwarnings("ignore", message="ONNX export mode is set to TrainingMode.EVAL")
        with torch.no_grad():
            names = input_names + list(OUTPUT_NAMES)
            torch.onnx.export(net, args, buffer, dynamo=False, opset_version=OPSET,
                              input_names=input_names, output_names=list(OUTPUT_NAMES),
                              dynamic_axes={name: {0: "B"} for name in names})
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in meta.to_props().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    data = proto.SerializeToString()
    # The ONNX checker reads the temporary file itself (no second serialisation).
    atomic_write(out, lambda f: f.write(data),
                 check=lambda tmp: onnx.checker.check_model(str(tmp)))
    return meta


def example_inputs(cfg: SimpleBevConfig, dtype: str = "fp32", uint8_images: bool = False,
                   batch: int = 1, seed: int = 0) -> tuple[Tensor, ...]:
    """Random (images[, radar]) of the exported graph's input shapes and dtypes."""
    g = torch.Generator().manual_seed(seed)
    S, H, W = len(cfg.input.cameras), cfg.input.image_height, cfg.input.image_width
    images = torch.rand(batch, S, 3, H, W, generator=g)
    images = (images * 255).round().to(torch.uint8) if uint8_images else images.to(DTYPES[dtype])
    channels = radar_channels(cfg.model.radar)
    if channels == 0:
        return (images,)
    Z, Y, X = cfg.grid.voxels_zyx
    occupied = (torch.rand(batch, 1, Z, Y, X, generator=g) > 0.95).float()  # 5 % of voxels
    if cfg.model.radar == "occupancy":
        return images, occupied.to(DTYPES[dtype])
    meta = torch.randn(batch, channels, Z, Y, X, generator=g) * occupied
    return images, meta.to(DTYPES[dtype])


# ----------------------------------------------------------------------------- CLI


def config_for_checkpoint(params_file: str, checkpoint: str, radar: bool) -> SimpleBevConfig:
    """The params file, with the network sections (model, grid) of the checkpoint's own config
    when it carries one (upstream checkpoints do not), and model.radar = meta for --radar."""
    cfg = load_config(params_file)
    trained = checkpoint_config(checkpoint)
    if trained is not None:
        cfg = replace(cfg, model=trained.model, grid=trained.grid)
    if radar:
        if trained is not None and trained.model.radar != "meta":
            raise ConfigError(f"--radar, but checkpoint '{checkpoint}' was trained with "
                              f"model.radar '{trained.model.radar}'")
        cfg = replace(cfg, model=replace(cfg.model, radar="meta"))
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simplebev_core.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="simplebev or upstream checkpoint (file or directory)")
    parser.add_argument("--params-file", required=True, help="config in ROS 2 params-file form")
    parser.add_argument("--calibration", required=True, help="rig calibration YAML/JSON")
    parser.add_argument("--out", required=True, help="output .onnx file")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--radar", action="store_true",
                        help="the model takes meta-radar (model.radar: meta)")
    parser.add_argument("--uint8-images", action="store_true",
                        help="images input as uint8 in [0, 255]")
    args = parser.parse_args(argv)
    try:
        t0 = time.perf_counter()
        cfg = config_for_checkpoint(args.params_file, args.checkpoint, args.radar)
        calibration = load_calibration(args.calibration)
        check_cameras(calibration, cfg)
        model = model_for_checkpoint(cfg).eval()
        load_checkpoint(args.checkpoint, model)
        meta = export_onnx(model, model.cfg, calibration, args.out, args.dtype,
                           args.uint8_images)
    except (ConfigError, CheckpointError, CalibrationError, ExportError, MissingPackageError,
            OSError) as e:
        print(f"export: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    size = Path(args.out).stat().st_size / 2**20
    print(f"wrote {args.out} ({size:.1f} MiB, {meta.dtype}, radar {meta.radar}) for calibration "
          f"{meta.calibration_hash[:12]} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
