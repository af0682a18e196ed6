"""Config: one YAML, typed, validated, ROS-parameter compatible."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import simplebev_core.config as config_module
from simplebev_core.config import (
    NODE_NAME, ConfigError, SimpleBevConfig, apply_overrides, config_from_dict, config_to_dict,
    default_config_path, describe_keys, flatten_config, key_docs, key_rule, key_specs,
    load_config, parse_override, ros_range,
)

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_upstream_headline_setting():
    cfg = load_config()
    assert cfg == SimpleBevConfig()  # the YAML and the dataclass defaults agree
    assert cfg.model.encoder == "res101" and cfg.model.radar == "none"
    assert (cfg.input.image_height, cfg.input.image_width) == (448, 800)
    assert cfg.grid.voxels_zyx == (200, 8, 200)
    assert cfg.grid.bounds_m() == ((-50.0, 50.0), (-4.0, 6.0), (-50.0, 50.0))
    assert cfg.grid.voxel_size_m() == (0.5, 1.25, 0.5)
    assert cfg.input.cameras[1] == cfg.input.ref_camera == "CAM_FRONT"


def test_dotted_overrides_apply():
    cfg = load_config(overrides={"model.encoder": "res50", "grid.voxels_zyx": [16, 2, 16],
                                 "grid.x_range_m": [-8, 8]})
    assert cfg.model.encoder == "res50"
    assert cfg.grid.voxels_zyx == (16, 2, 16)
    assert cfg.grid.x_range_m == (-8.0, 8.0) and isinstance(cfg.grid.x_range_m[0], float)


@pytest.mark.parametrize("overrides, fragment", [
    ({"model.encodr": "res50"}, "'model.encodr'"),
    ({"nosection.key": 1}, "'nosection'"),
    ({"model.encoder": "vit"}, "'model.encoder'"),
    ({"model.latent_dim": "128"}, "'model.latent_dim'"),
    ({"model.latent_dim": 1.5}, "'model.latent_dim'"),
    ({"model.rand_flip": 1}, "'model.rand_flip'"),
    ({"grid.voxels_zyx": [8, 2]}, "'grid.voxels_zyx'"),
    ({"grid.x_range_m": [5.0, -5.0]}, "'grid.x_range_m'"),
    ({"input.ref_camera": "CAM_TOP"}, "'input.ref_camera'"),
    ({"model.replk_kernel": 4}, "'model.replk_kernel'"),
    ({"postprocess.nms_kernel": 4}, "'postprocess.nms_kernel'"),
    ({"node.device": "gpu"}, "'node.device'"),
])
def test_bad_values_name_the_key(overrides, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=overrides)
    assert fragment in str(err.value)


def test_unknown_key_in_file_is_an_error(tmp_path):
    doc = {NODE_NAME: {"ros__parameters": {"model": {"encoder": "res50", "dropout": 0.1}}}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="'model.dropout'"):
        load_config(path)


def test_missing_node_section_is_an_error(tmp_path):
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump({"other_node": {"ros__parameters": {}}}))
    with pytest.raises(ConfigError, match=NODE_NAME):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_shipped_yaml_writes_floats_as_floats():
    """ROS declares a parameter's type from the YAML literal: 50 would become an integer."""
    raw = yaml.safe_load(default_config_path().read_text())[NODE_NAME]["ros__parameters"]
    cfg = config_from_dict(raw)
    for key, value in flatten_config(cfg).items():
        section, name = key.split(".")
        literal = raw[section][name]
        if isinstance(value, float):
            assert isinstance(literal, float), f"{key} must be written with a decimal point"
        if isinstance(value, list) and value and isinstance(value[0], float):
            assert all(isinstance(v, float) for v in literal), (
                f"{key} must be written with decimal points")


def test_values_are_ros_parameter_types_and_round_trip():
    cfg = load_config()
    flat = flatten_config(cfg)
    for key, value in flat.items():
        if isinstance(value, list):
            assert value and len({type(v) for v in value}) == 1, (
                f"{key}: lists must be homogeneous and non-empty")
            value = value[0]
        assert type(value) in (bool, int, float, str), key
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_parse_override():
    assert parse_override("model.encoder=res50") == ("model.encoder", "res50")
    assert parse_override("grid.voxels_zyx=[8, 2, 8]") == ("grid.voxels_zyx", [8, 2, 8])
    assert parse_override("model.rand_flip=false") == ("model.rand_flip", False)
    # YAML 1.1 alone would give a string
    assert parse_override("train.lr=2e-3") == ("train.lr", 0.002)
    assert parse_override("input.ref_camera=CAM_BACK") == ("input.ref_camera", "CAM_BACK")
    with pytest.raises(ConfigError):
        parse_override("model.encoder")


# ----------------------------------------------------------------- locating the default config
# The locator looks next to simplebev_core/config.py; these tests point the module's __file__
# at fake layouts (a checkout, an install, a ROS prefix) under tmp_path.


def _fake_module(monkeypatch, package_dir: Path) -> None:
    package_dir.mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(config_module, "__file__", str(package_dir / "config.py"))


def _copy_of_shipped_config(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text((REPO / "config" / "simplebev.yaml").read_text())
    return path


def test_default_config_is_the_source_trees_in_a_checkout():
    assert default_config_path() == REPO / "config" / "simplebev.yaml"


def test_source_tree_wins_over_a_stray_installed_copy(tmp_path, monkeypatch):
    (tmp_path / "package.xml").write_text("<package/>")
    source = _copy_of_shipped_config(tmp_path / "config" / "simplebev.yaml")
    _copy_of_shipped_config(tmp_path / "simplebev_core" / "simplebev.yaml")
    _fake_module(monkeypatch, tmp_path / "simplebev_core")
    assert default_config_path() == source


def test_installed_copy_next_to_the_module(tmp_path, monkeypatch):
    # site-packages may hold someone else's config/ folder: not a checkout, so not read.
    _copy_of_shipped_config(tmp_path / "site" / "config" / "simplebev.yaml")
    installed = _copy_of_shipped_config(tmp_path / "site" / "simplebev_core" / "simplebev.yaml")
    _fake_module(monkeypatch, tmp_path / "site" / "simplebev_core")
    assert default_config_path() == installed
    assert load_config() == SimpleBevConfig() and describe_keys()["model.encoder"]


def test_ros_share_directory_through_the_ament_index(tmp_path, monkeypatch):
    pytest.importorskip("ament_index_python", reason="the ament index lookup needs it")
    prefix = tmp_path / "install"
    marker = prefix / "share" / "ament_index" / "resource_index" / "packages" / "simplebev"
    marker.parent.mkdir(parents=True)
    marker.write_text("")
    shared = _copy_of_shipped_config(prefix / "share" / "simplebev" / "config" / "simplebev.yaml")
    _fake_module(monkeypatch, tmp_path / "site" / "simplebev_core")
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    assert default_config_path() == shared


def test_missing_default_config_names_every_place_looked(tmp_path, monkeypatch):
    _fake_module(monkeypatch, tmp_path / "site" / "simplebev_core")
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path / "empty_prefix"))
    with pytest.raises(ConfigError) as err:
        load_config()
    message = str(err.value)
    assert str(tmp_path / "site" / "simplebev_core" / "simplebev.yaml") in message
    assert "ROS share directory" in message and "pass a params file" in message


# ----------------------------------------------------------------- one definition per key
# Each key's rules and documentation live in its KeySpec (simplebev_core.config); validation,
# the ROS descriptors (tests/ros/test_params.py), the YAML comments and docs/config.md derive.

INT64_MAX = 2**63 - 1


def _with(key: str, value):
    return apply_overrides(config_to_dict(SimpleBevConfig()), {key: value})


def _valid(key: str, value) -> bool:
    try:
        config_from_dict(_with(key, value))
    except ConfigError as e:
        assert f"'{key}'" in str(e)
        return False
    return True


def ros_admits(span, value) -> bool:
    """ROS 2's range rule (rclpy Node._apply_integer_range / _apply_floating_point_range):
    the ends always, else strictly inside and, with a step, a whole number of steps from the
    lower end (floats here have step 0)."""
    lo, hi, step = span
    if value in (lo, hi):
        return True
    if not lo < value < hi:
        return False
    return step == 0 or (value - lo) % step == 0


def range_samples(span, kind) -> list:
    """The ends, just outside them, the step and a few interior values."""
    lo, hi, step = span
    if kind is float:
        import math
        return [lo, math.nextafter(lo, -math.inf), lo + 1e-9, 0.5, 1.0, 3.0, 1e6, hi]
    values = {lo - 2, lo - 1, lo, lo + 1, lo + 2, lo + 3, lo + 4, lo + 5, lo + 30, lo + 31,
              1000, 1001, hi - 3, hi - 2, hi - 1, hi}
    return sorted(v for v in values if -INT64_MAX - 1 <= v <= INT64_MAX)


def _spans():
    defaults = flatten_config(SimpleBevConfig())
    for key in key_specs():
        kind = type(defaults[key])
        span = ros_range(key, kind)
        if span is not None:
            yield key, kind, span


@pytest.mark.parametrize("key, kind, span", list(_spans()), ids=lambda x: str(x))
def test_every_value_a_ros_range_admits_is_valid_and_every_other_is_not(key, kind, span):
    for value in range_samples(span, kind):
        assert ros_admits(span, value) == _valid(key, value), (key, span, value)


def test_nms_kernel_range_admits_exactly_the_odd_sizes():
    span = ros_range("postprocess.nms_kernel", int)
    assert span[0] == 1 and span[2] == 2 and span[1] % 2 == 1
    for k in range(-3, 40):
        assert ros_admits(span, k) == _valid("postprocess.nms_kernel", k) == (k > 0 and k % 2)
    assert not _valid("postprocess.nms_kernel", 4) and not ros_admits(span, 4)


def test_rules_a_range_cannot_state_have_no_range_but_words():
    defaults = flatten_config(SimpleBevConfig())
    # Open float bounds and rules between keys: no range, the rule in words.
    for key in ("postprocess.seg_threshold", "postprocess.center_threshold", "train.lr",
                "data.camera_dropout", "model.replk_small_kernel", "model.replk_kernel"):
        assert ros_range(key, type(defaults[key])) is None, key
        assert key_rule(key), key
    assert key_rule("postprocess.seg_threshold") == "in (0, 1)"
    assert key_rule("model.replk_kernel") == "odd, >= 1, >= model.replk_small_kernel"
    with pytest.raises(ConfigError, match="'model.replk_small_kernel'"):
        config_from_dict(_with("model.replk_kernel", 3))
    assert not _valid("postprocess.seg_threshold", 0.0)
    assert not _valid("postprocess.seg_threshold", 1.0)
    assert _valid("postprocess.seg_threshold", 0.999)
    assert "<= model.replk_kernel" in key_rule("model.replk_small_kernel")
    assert not _valid("model.replk_small_kernel", 33)


def test_every_key_has_a_spec_and_documentation():
    docs = key_docs()
    assert list(key_specs()) == list(flatten_config(SimpleBevConfig()))
    assert [k for k, d in docs.items() if not d] == []
    assert "{allowed}" not in " ".join(docs.values())


def test_backend_names_are_one_tuple():
    from simplebev_core.backends import KINDS

    assert KINDS == config_module.BACKENDS == key_specs()["node.backend"].choices
    for kind in KINDS:
        assert kind in key_docs()["node.backend"]


@pytest.mark.parametrize("spec", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", " CPU ", "CUDA:1",
                                  "gpu", "cuda:", "cuda:x", "cpu:0", "auto:1", "mps", ""])
def test_device_grammar_is_the_device_modules(spec):
    from simplebev_core.device import DEVICE_SPECS, DeviceError, parse_device_spec

    try:
        parse_device_spec(spec)
        parsed = True
    except DeviceError:
        parsed = False
    assert _valid("node.device", spec) == parsed
    assert key_specs()["node.device"].rule() == DEVICE_SPECS
    assert DEVICE_SPECS in key_docs()["node.device"]


@pytest.mark.parametrize("key, value", [
    ("postprocess.nms_kernel", 4), ("postprocess.nms_kernel", 0), ("postprocess.min_pixels", 0),
    ("postprocess.offset_scale", -0.5), ("input.cameras", []), ("input.cameras", ["A", "A"]),
    ("data.resize_range", [1.2, 0.8]), ("data.camera_dropout", 1.0),
    ("node.image_topic_pattern", "/cam/image"), ("node.radar_topics", ["/a", ""]),
    ("node.map_frame", ""), ("node.backend", "tvm"), ("grid.voxels_zyx", [8, 0, 8]),
])
def test_invalid_values_name_the_key_and_the_rule(key, value):
    with pytest.raises(ConfigError) as err:
        config_from_dict(_with(key, value))
    assert f"'{key}'" in str(err.value)
