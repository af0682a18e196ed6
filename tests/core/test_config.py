"""Config: one YAML, typed, validated, ROS-parameter compatible."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import simplebev_core.config as config_module
from simplebev_core.config import (
    NODE_NAME, ConfigError, SimpleBevConfig, config_from_dict, config_to_dict,
    default_config_path, describe_keys, flatten_config, load_config, parse_override,
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
