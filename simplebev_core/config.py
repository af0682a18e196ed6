"""Typed, validated configuration read from `config/simplebev.yaml` (ROS 2 params-file form).

One file feeds three readers: the ROS node (flattened to dotted parameter names), training
(`--set key=value` overrides) and tests. Every value has a type a ROS parameter can hold:
bool, int, float, str, or a homogeneous list of those. Unknown keys and wrong types raise
`ConfigError` naming the dotted key.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import yaml

NODE_NAME = "simplebev_node"
# The default params file, whose comments document every key. Its one source is
# config/simplebev.yaml at the repository root; installs carry copies the build makes from it
# (default_config_path()).
DEFAULT_CONFIG_NAME = "simplebev.yaml"
# The ROS 2 package whose share directory holds config/simplebev.yaml in a ROS install.
ROS_PACKAGE = "simplebev"

ENCODERS = ("res101", "res50", "effb0", "camencode", "camencode_replk")
RADAR_MODES = ("none", "occupancy", "meta")
PIXEL_CONVENTIONS = ("upstream", "exact")
LIFTS = ("fused", "reference")
CAMERA_POSES = ("capture_time", "static")
# data.compat: the project's fixed preprocessing, or upstream's (for released checkpoints).
DATA_COMPAT_MODES = ("project", "upstream")
NUSCENES_CAMERAS = (
    "CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT",
    "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT",
)


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type, or out of range."""


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {message}")


@dataclass(frozen=True)
class GridConfig:
    """The voxel grid in the reference frame (X right, Y down, Z forward; metres)."""

    x_range_m: tuple[float, ...] = (-50.0, 50.0)
    y_range_m: tuple[float, ...] = (-5.0, 5.0)
    z_range_m: tuple[float, ...] = (-50.0, 50.0)
    centroid_m: tuple[float, ...] = (0.0, 1.0, 0.0)
    voxels_zyx: tuple[int, ...] = (200, 8, 200)

    def validate(self, prefix: str) -> None:
        for name in ("x_range_m", "y_range_m", "z_range_m"):
            lo_hi = getattr(self, name)
            _check(len(lo_hi) == 2 and lo_hi[0] < lo_hi[1], f"{prefix}.{name}",
                   f"expected [min, max] with min < max, got {list(lo_hi)}")
        _check(len(self.centroid_m) == 3, f"{prefix}.centroid_m", "expected 3 values [x, y, z]")
        _check(len(self.voxels_zyx) == 3 and min(self.voxels_zyx) > 0, f"{prefix}.voxels_zyx",
               f"expected 3 positive counts [Z, Y, X], got {list(self.voxels_zyx)}")

    @property
    def Z(self) -> int:
        return self.voxels_zyx[0]

    @property
    def Y(self) -> int:
        return self.voxels_zyx[1]

    @property
    def X(self) -> int:
        return self.voxels_zyx[2]

    def bounds_m(self) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
        """((xmin, xmax), (ymin, ymax), (zmin, zmax)) after the centroid shift."""
        cx, cy, cz = self.centroid_m
        return (
            (self.x_range_m[0] + cx, self.x_range_m[1] + cx),
            (self.y_range_m[0] + cy, self.y_range_m[1] + cy),
            (self.z_range_m[0] + cz, self.z_range_m[1] + cz),
        )

    def voxel_size_m(self) -> tuple[float, float, float]:
        """(x, y, z) edge lengths of one voxel."""
        (x0, x1), (y0, y1), (z0, z1) = self.bounds_m()
        return ((x1 - x0) / self.X, (y1 - y0) / self.Y, (z1 - z0) / self.Z)


@dataclass(frozen=True)
class InputConfig:
    """What the model is fed: camera order, reference camera, network input size."""

    cameras: tuple[str, ...] = NUSCENES_CAMERAS
    ref_camera: str = "CAM_FRONT"
    image_height: int = 448
    image_width: int = 800
    # How camera extrinsics treat ego motion between the cameras' capture times
    # (simplebev_core.frame): capture_time | static.
    camera_poses: str = "capture_time"

    def validate(self, prefix: str) -> None:
        _check(self.camera_poses in CAMERA_POSES, f"{prefix}.camera_poses",
               f"'{self.camera_poses}' is not one of {list(CAMERA_POSES)}")
        _check(len(self.cameras) > 0, f"{prefix}.cameras", "at least one camera is needed")
        _check(len(set(self.cameras)) == len(self.cameras), f"{prefix}.cameras",
               "camera names must be unique")
        _check(self.ref_camera in self.cameras, f"{prefix}.ref_camera",
               f"'{self.ref_camera}' is not one of input.cameras {list(self.cameras)}")
        for name in ("image_height", "image_width"):
            _check(getattr(self, name) >= 32, f"{prefix}.{name}", "must be at least 32 pixels")


@dataclass(frozen=True)
class ModelConfig:
    encoder: str = "res101"
    encoder_pretrained: bool = True
    latent_dim: int = 128
    radar: str = "none"
    pixel_convention: str = "upstream"
    lift: str = "fused"
    rand_flip: bool = True
    replk_blocks: int = 2
    replk_kernel: int = 31
    replk_small_kernel: int = 5

    def validate(self, prefix: str) -> None:
        for name, allowed in (("encoder", ENCODERS), ("radar", RADAR_MODES),
                              ("pixel_convention", PIXEL_CONVENTIONS), ("lift", LIFTS)):
            value = getattr(self, name)
            _check(value in allowed, f"{prefix}.{name}",
                   f"'{value}' is not one of {list(allowed)}")
        _check(self.latent_dim > 0, f"{prefix}.latent_dim", "must be positive")
        _check(self.replk_blocks >= 0, f"{prefix}.replk_blocks", "must be >= 0")
        for name in ("replk_kernel", "replk_small_kernel"):
            k = getattr(self, name)
            _check(k > 0 and k % 2 == 1, f"{prefix}.{name}",
                   f"must be a positive odd kernel size, got {k}")
        _check(self.replk_small_kernel <= self.replk_kernel, f"{prefix}.replk_small_kernel",
               "must not exceed replk_kernel")


@dataclass(frozen=True)
class PostprocessConfig:
    seg_threshold: float = 0.5
    center_threshold: float = 0.3
    nms_kernel: int = 5
    min_pixels: int = 3
    max_instances: int = 100
    offset_scale: float = 0.5

    def validate(self, prefix: str) -> None:
        for name in ("seg_threshold", "center_threshold"):
            _check(0.0 < getattr(self, name) < 1.0, f"{prefix}.{name}", "must be in (0, 1)")
        _check(self.nms_kernel > 0 and self.nms_kernel % 2 == 1, f"{prefix}.nms_kernel",
               "must be a positive odd number")
        _check(self.min_pixels >= 1, f"{prefix}.min_pixels", "must be >= 1")
        _check(self.max_instances >= 1, f"{prefix}.max_instances", "must be >= 1")


AMP_MODES = ("none", "bf16", "fp16")


@dataclass(frozen=True)
class DataConfig:
    """How training/evaluation samples are built from a dataset (training/; the node reads
    radar_sweeps and compat)."""

    # Preprocessing convention: project | upstream (reproduces upstream's data pipeline for
    # released checkpoints; docs/training.md "Upstream-compatible data mode").
    compat: str = "project"
    # Radar sweeps per radar (5 radars), motion-compensated into the keyframe ego pose.
    radar_sweeps: int = 3
    # Train-time random resize-crop: resize by s ~ U(lo, hi) relative to the input size, then crop.
    rand_resize_crop: bool = True
    resize_range: tuple[float, ...] = (0.8, 1.2)
    # Train-time random reference camera, drawn from input.cameras except the first (upstream).
    rand_ref_camera: bool = True
    # Train-time probability of blanking each non-reference camera's image (0 = off, upstream).
    camera_dropout: float = 0.0
    # Centre heatmap Gaussian sigma in BEV cells (upstream: 3).
    center_sigma_cells: float = 3.0
    # Worker processes per training process for data loading.
    num_workers: int = 4

    def validate(self, prefix: str) -> None:
        _check(self.compat in DATA_COMPAT_MODES, f"{prefix}.compat",
               f"'{self.compat}' is not one of {list(DATA_COMPAT_MODES)}")
        _check(self.radar_sweeps >= 1, f"{prefix}.radar_sweeps", "must be >= 1")
        lo_hi = self.resize_range
        _check(len(lo_hi) == 2 and 0.0 < lo_hi[0] <= lo_hi[1], f"{prefix}.resize_range",
               f"expected [lo, hi] with 0 < lo <= hi, got {list(lo_hi)}")
        _check(0.0 <= self.camera_dropout < 1.0, f"{prefix}.camera_dropout", "must be in [0, 1)")
        _check(self.center_sigma_cells > 0.0, f"{prefix}.center_sigma_cells", "must be positive")
        _check(self.num_workers >= 0, f"{prefix}.num_workers", "must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation recipe (training/ only). Defaults: upstream's released-checkpoint recipe."""

    max_steps: int = 25000
    # Global micro-batch (split evenly over processes) and accumulation: effective batch 40.
    batch_size: int = 8
    grad_acc: int = 5
    lr: float = 5.0e-4
    weight_decay: float = 1.0e-7
    adam_eps: float = 1.0e-8
    # OneCycleLR over max_steps + scheduler_extra_steps (upstream: +100), linear anneal.
    use_scheduler: bool = True
    pct_start: float = 0.05
    scheduler_extra_steps: int = 100
    # Bound on the norm of the SUM of the grad_acc micro-batch gradients, as upstream (which
    # summed the micro-batch losses); the loop averages the gradients and so clips the average
    # at grad_clip_norm / grad_acc.
    grad_clip_norm: float = 5.0
    # Losses: 10 * BCE(pos_weight) + centre + offset with learned uncertainty weights.
    ce_scale: float = 10.0
    pos_weight: float = 2.13
    # Mixed precision on CUDA: none | bf16 | fp16 (fp16 uses a gradient scaler). Ignored on CPU.
    amp: str = "none"
    # fp16 only: steps the gradient scaler skips (non-finite loss or gradients) are skipped and
    # counted; this many in a row stop the run.
    max_consecutive_skips: int = 20
    seed: int = 125
    log_every: int = 10
    image_every: int = 100
    save_every: int = 1000
    keep_latest: int = 3

    def validate(self, prefix: str) -> None:
        for name in ("max_steps", "batch_size", "grad_acc", "log_every", "image_every",
                     "save_every", "keep_latest", "max_consecutive_skips"):
            _check(getattr(self, name) >= 1, f"{prefix}.{name}", "must be >= 1")
        # OneCycleLR is stepped after every optimiser step, so it needs at least one step in hand.
        _check(self.scheduler_extra_steps >= 1, f"{prefix}.scheduler_extra_steps", "must be >= 1")
        for name in ("lr", "adam_eps", "grad_clip_norm", "ce_scale", "pos_weight"):
            _check(getattr(self, name) > 0.0, f"{prefix}.{name}", "must be positive")
        _check(self.weight_decay >= 0.0, f"{prefix}.weight_decay", "must be >= 0")
        _check(0.0 < self.pct_start < 1.0, f"{prefix}.pct_start", "must be in (0, 1)")
        _check(self.amp in AMP_MODES, f"{prefix}.amp",
               f"'{self.amp}' is not one of {list(AMP_MODES)}")


IMAGE_TYPES = ("compressed", "raw")
BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt")
MISSING_CAMERA_POLICIES = ("mask", "drop")
QOS_PROFILES = ("sensor_data", "reliable")
RADAR_CHANNELS = ("RADAR_BACK_RIGHT", "RADAR_BACK_LEFT", "RADAR_FRONT", "RADAR_FRONT_LEFT",
                  "RADAR_FRONT_RIGHT")


@dataclass(frozen=True)
class NodeConfig:
    """The ROS node's own settings (simplebev_ros; training ignores them, checkpoint comparisons
    too). Defaults follow the de-facto nuScenes ROS 2 layout (nuscenes2bag's topic names)."""

    checkpoint: str = ""
    # auto | cpu | cuda | cuda:N (auto: CUDA when available).
    device: str = "auto"
    # CUDA autocast for the model: none | bf16 | fp16.
    amp: str = "none"
    # Inference runtime: torch | onnxruntime | openvino | tensorrt. The runtimes run an export
    # for the rig's calibration (simplebev_core.export), so they need input.camera_poses static;
    # exports are cached in export_cache_dir, keyed by weights and calibration.
    backend: str = "torch"
    export_cache_dir: str = "~/.cache/simplebev"
    # backend torch without amp: run the model as frozen TorchScript (simplebev_core.torchscript;
    # checked against the eager model at start-up), else eagerly.
    torchscript: bool = True
    # Per-camera topics: '{camera}' is replaced by each name in input.cameras (use ROS
    # remapping for topics that do not follow a pattern).
    image_topic_pattern: str = "/{camera}/image_rect_compressed"
    camera_info_topic_pattern: str = "/{camera}/camera_info"
    # sensor_msgs/CompressedImage (compressed) or sensor_msgs/Image (raw) on image_topics.
    image_type: str = "compressed"
    radar_topics: tuple[str, ...] = tuple(f"/{c}" for c in RADAR_CHANNELS)
    map_frame: str = "map"
    base_frame: str = "base_link"
    # Camera set synchronisation (ApproximateTime semantics): the most a set's stamps may spread.
    sync_slop_s: float = 0.06
    sync_queue_size: int = 10
    # A camera still missing this long after the first image of a set: mask it or drop the set.
    missing_camera_timeout_s: float = 0.25
    missing_camera_policy: str = "mask"
    # How far a TF lookup may extrapolate past the newest (or before the oldest) transform.
    tf_tolerance_s: float = 0.05
    tf_cache_s: float = 10.0
    # A set is held until every transform it needs can be interpolated and its CameraInfo is
    # in, at most this long; then tf_tolerance_s applies (counted as extrapolated).
    input_wait_s: float = 0.2
    # Radar sweeps older than this (seconds before the set's stamp) are not used; 0: derived
    # from data.radar_sweeps at nuScenes' radar rate (simplebev_core.radar.max_sweep_age_s).
    radar_max_age_s: float = 0.0
    # Threads decoding a camera set's JPEGs (the decoder releases the GIL).
    decode_threads: int = 2
    input_qos: str = "sensor_data"
    input_qos_depth: int = 5
    occupancy_topic: str = "/bev/occupancy"
    instances_topic: str = "/bev/instances"
    markers_topic: str = "/bev/markers"
    bev_image_topic: str = "/bev/image"
    diagnostics_topic: str = "/diagnostics"
    diagnostics_period_s: float = 1.0
    # Diagnostics turn WARN when a camera has been silent this long.
    camera_silence_warn_s: float = 1.0

    def validate(self, prefix: str) -> None:
        for name, allowed in (("amp", AMP_MODES), ("image_type", IMAGE_TYPES),
                              ("backend", BACKENDS),
                              ("missing_camera_policy", MISSING_CAMERA_POLICIES),
                              ("input_qos", QOS_PROFILES)):
            value = getattr(self, name)
            _check(value in allowed, f"{prefix}.{name}",
                   f"'{value}' is not one of {list(allowed)}")
        _check(re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None, f"{prefix}.device",
               f"'{self.device}' is not auto, cpu, cuda or cuda:N")
        for name in ("sync_slop_s", "missing_camera_timeout_s", "tf_cache_s",
                     "diagnostics_period_s", "camera_silence_warn_s"):
            _check(getattr(self, name) > 0.0, f"{prefix}.{name}", "must be positive")
        for name in ("tf_tolerance_s", "input_wait_s", "radar_max_age_s"):
            _check(getattr(self, name) >= 0.0, f"{prefix}.{name}", "must be >= 0")
        for name in ("sync_queue_size", "input_qos_depth", "decode_threads"):
            _check(getattr(self, name) >= 1, f"{prefix}.{name}", "must be >= 1")
        for name in ("image_topic_pattern", "camera_info_topic_pattern"):
            _check("{camera}" in getattr(self, name), f"{prefix}.{name}",
                   "must contain '{camera}' (replaced by each camera name)")
        _check(all(t for t in self.radar_topics), f"{prefix}.radar_topics",
               "topic names must not be empty")
        for name in ("map_frame", "base_frame"):
            _check(bool(getattr(self, name)), f"{prefix}.{name}", "must not be empty")

    def camera_image_topic(self, camera: str) -> str:
        return self.image_topic_pattern.replace("{camera}", camera)

    def camera_info_topic(self, camera: str) -> str:
        return self.camera_info_topic_pattern.replace("{camera}", camera)


@dataclass(frozen=True)
class SimpleBevConfig:
    grid: GridConfig = field(default_factory=GridConfig)
    input: InputConfig = field(default_factory=InputConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    node: NodeConfig = field(default_factory=NodeConfig)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate(f.name)
        _check(self.node.backend == "torch" or self.input.camera_poses == "static", "node.backend",
               f"'{self.node.backend}' runs an export for a fixed rig: set input.camera_poses to "
               f"static (it is '{self.input.camera_poses}') or use the torch backend")
        if self.data.compat == "upstream":
            _check_upstream_compat(self)


def _check_upstream_compat(cfg: SimpleBevConfig) -> None:
    """data.compat upstream reproduces upstream's preprocessing as a whole; the two keys that
    already describe part of it must agree rather than be overridden silently."""
    for key, value, needed in (("input.camera_poses", cfg.input.camera_poses, "static"),
                               ("model.pixel_convention", cfg.model.pixel_convention, "upstream")):
        _check(value == needed, key,
               f"data.compat 'upstream' needs {key} '{needed}' (upstream's convention), got "
               f"'{value}': set {key}={needed} or data.compat=project")


# --------------------------------------------------------------------------- conversion


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check one leaf value against its declared type; return it in canonical form."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        item_type = typing.get_args(annotation)[0]
        _check(isinstance(value, (list, tuple)), key,
               f"expected a list of {item_type.__name__}, got {value!r}")
        return tuple(_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value))
    if annotation is bool:
        _check(isinstance(value, bool), key, f"expected bool, got {value!r}")
        return value
    if annotation is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key,
               f"expected int, got {value!r}")
        return value
    if annotation is float:
        # An int is accepted for a float (lossless); the YAML file itself writes floats with a
        # decimal point so that ROS declares a double parameter.
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key,
               f"expected float, got {value!r}")
        return float(value)
    if annotation is str:
        _check(isinstance(value, str), key, f"expected str, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {annotation!r} for '{key}'")


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"config key '{prefix or '<root>'}': expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"'{prefix}.{unknown[0]}'" if prefix else f"'{unknown[0]}'"
        raise ConfigError(f"unknown config key {where} (known: {sorted(names)})")
    kwargs = {}
    for name in names & set(data):
        key = f"{prefix}.{name}" if prefix else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, data[name], key)
        else:
            kwargs[name] = _coerce(data[name], hint, key)
    return cls(**kwargs)


def config_from_dict(data: Mapping[str, Any]) -> SimpleBevConfig:
    """Nested dict (as in the YAML's ros__parameters, or a checkpoint) -> validated config."""
    cfg = _build(SimpleBevConfig, data, "")
    cfg.validate()
    return cfg


def config_to_dict(cfg: SimpleBevConfig) -> dict[str, Any]:
    """Config -> nested dict of plain Python values (lists for tuples), e.g. for checkpoints."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def flatten_config(cfg: SimpleBevConfig) -> dict[str, Any]:
    """Config -> {"grid.x_range_m": [...], ...}: the ROS parameter names and values."""
    out: dict[str, Any] = {}

    def walk(d: Mapping[str, Any], prefix: str) -> None:
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else k
            if isinstance(v, Mapping):
                walk(v, key)
            else:
                out[key] = v

    walk(config_to_dict(cfg), "")
    return out


_FLOAT_WITHOUT_POINT = re.compile(r"^[-+]?\d+[eE][-+]?\d+$")


def parse_override(text: str) -> tuple[str, Any]:
    """'model.encoder=res50' -> ('model.encoder', 'res50'); the value is parsed as YAML.

    YAML 1.1 reads '2e-3' (no decimal point) as a string; on a command line it means a float.
    """
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    raw = raw.strip()
    if _FLOAT_WITHOUT_POINT.match(raw):
        return key.strip(), float(raw)
    return key.strip(), yaml.safe_load(raw) if raw else ""


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of the nested dict with dotted-key overrides applied (keys must exist)."""
    import copy

    out = copy.deepcopy(data)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"unknown config key '{'.'.join(parts[:i + 1])}' "
                                  f"in override '{dotted}'")
            node = node[part]
        if parts[-1] not in node or isinstance(node[parts[-1]], dict):
            raise ConfigError(f"unknown config key '{dotted}' in override")
        node[parts[-1]] = value
    return out


def _default_config_candidates() -> Iterator[tuple[str, Path | None]]:
    """(where, path) in the order searched; path None where the place could not be resolved
    (then `where` says why). Lazy: the ament index is only consulted when needed."""
    package_dir = Path(__file__).resolve().parent
    # Only a checkout has package.xml beside the Python packages: an installed package's
    # parent is site-packages, where a `config/` folder would belong to someone else.
    if (package_dir.parent / "package.xml").is_file():
        yield "source tree", package_dir.parent / "config" / DEFAULT_CONFIG_NAME
    # setup.py's build_py (pip) and CMakeLists.txt (colcon) copy it next to this module.
    yield "installed package", package_dir / DEFAULT_CONFIG_NAME
    try:
        from ament_index_python.packages import get_package_prefix
    except ImportError:
        yield "ROS share directory: ament_index_python does not import", None
        return
    try:
        share = Path(get_package_prefix(ROS_PACKAGE)) / "share" / ROS_PACKAGE
    except (LookupError, OSError):  # not in the index, or AMENT_PREFIX_PATH unset
        yield (f"ROS share directory: no package '{ROS_PACKAGE}' in the ament index "
               "(AMENT_PREFIX_PATH)", None)
    else:
        yield "ROS share directory", share / "config" / DEFAULT_CONFIG_NAME


def default_config_path() -> Path:
    """The shipped default params file: the source tree's config/simplebev.yaml, the copy an
    install put next to this module, or the ROS package's share directory (ament index).
    Raises ConfigError naming every place looked."""
    looked = []
    for where, path in _default_config_candidates():
        if path is not None and path.is_file():
            return path
        looked.append(where if path is None else f"{where}: {path}")
    raise ConfigError(f"the default config file {DEFAULT_CONFIG_NAME} was not found (looked "
                      f"in {'; '.join(looked)}); pass a params file, or reinstall simplebev")


def read_params_file(path: str | Path, node_name: str = NODE_NAME) -> dict[str, Any]:
    """The nested `ros__parameters` dict of `node_name` in a ROS 2 params file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    with path.open() as f:
        doc = yaml.safe_load(f) or {}
    try:
        params = doc[node_name]["ros__parameters"]
    except (KeyError, TypeError):
        raise ConfigError(f"config file '{path}' has no "
                          f"'{node_name}: ros__parameters:' section") from None
    return params


def load_config(path: str | Path | None = None,
                overrides: Mapping[str, Any] | None = None) -> SimpleBevConfig:
    """Read a params file (default: the shipped one, default_config_path()), apply dotted
    overrides such as {"model.encoder": "res50"}, and validate.

    Keys missing from the file take the dataclass defaults, which mirror the shipped YAML.
    """
    data = read_params_file(path if path is not None else default_config_path())
    full = apply_overrides(config_to_dict(config_from_dict(data)), overrides or {})
    return config_from_dict(full)


# --------------------------------------------------------------------------- presets, CLI


def read_preset(path: str | Path) -> dict[str, Any]:
    """A preset file: a flat YAML mapping of dotted config keys to values (applied as
    overrides)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"preset file '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"preset file '{path}' is not valid YAML: {e}") from e
    if not isinstance(data, dict) or any(not isinstance(k, str) for k in data):
        raise ConfigError(f"preset file '{path}' must be a mapping of dotted keys "
                          "(e.g. model.encoder: camencode)")
    return data


def resolve_config(config: str | Path | None = None, presets: Sequence[str | Path] = (),
                   sets: Sequence[str] = (),
                   base: SimpleBevConfig | None = None) -> SimpleBevConfig:
    """`base` (e.g. a checkpoint's config) or the params file `config` (default: the
    repository's), then the presets in order, then `--set key=value` overrides."""
    overrides: dict[str, Any] = {}
    for preset in presets:
        overrides.update(read_preset(preset))
    overrides.update(dict(parse_override(s) for s in sets))
    if base is None:
        return load_config(config, overrides)
    return config_from_dict(apply_overrides(config_to_dict(base), overrides))


def write_params_file(cfg: SimpleBevConfig, path: str | Path, node_name: str = NODE_NAME) -> Path:
    """Write `cfg` in the params-file form (readable by load_config, usable as --config)."""
    path = Path(path)
    doc = {node_name: {"ros__parameters": config_to_dict(cfg)}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def describe_keys(path: str | Path | None = None) -> dict[str, str]:
    """{dotted key: the comment lines written above it} in a params file (default: the shipped
    config/simplebev.yaml, whose comments document every key). Used for ROS parameter
    descriptions and the README's configuration reference."""
    lines = Path(path if path is not None else default_config_path()).read_text().splitlines()
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    comment: list[str] = []
    last = ""
    for line in lines:
        text = line.strip()
        if text.startswith("#"):
            comment.append(text.lstrip("#").strip())
            continue
        match = re.match(r"^(\s*)([A-Za-z_][\w]*):", line)
        if not match:
            if not text:
                comment = []
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parents = [k for _, k in stack if k not in (NODE_NAME, "ros__parameters")]
        if line.rstrip().endswith(":"):
            stack.append((indent, key))
        elif parents:
            # A key without its own comment shares the comment of the group above it.
            same_group = last and last.rsplit(".", 1)[0] == ".".join(parents)
            group = " ".join(comment) or (out[last] if same_group else "")
            last = ".".join(parents + [key])
            out[last] = group
        comment = []
    return out
