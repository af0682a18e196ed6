"""The ROS parameter descriptors derive from the config's key definitions: their descriptions
are the key docs, their ranges admit exactly the values config validation admits (checked with
rclpy's own range rule), and rules no ROS range can state are in additional_constraints."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from rclpy.node import Node
from rclpy.parameter import Parameter

from simplebev_core.config import (ConfigError, SimpleBevConfig, apply_overrides,
                                   config_from_dict, config_to_dict, describe_keys,
                                   flatten_config, key_docs, key_rule)
from simplebev_ros import params

DEFAULTS = flatten_config(SimpleBevConfig())
INT64 = (-2**63, 2**63 - 1)


def descriptors():
    return {key: params.descriptor(key, value) for key, value in DEFAULTS.items()}


def ros_admits(d, key: str, value) -> bool:
    """rclpy's check of `value` against descriptor `d`'s range (Node._apply_descriptor)."""
    p = Parameter(key, value=value)
    if d.integer_range:
        return Node._apply_integer_range(None, p, d.integer_range[0]).successful
    fake = SimpleNamespace(PARAM_REL_TOL=Node.PARAM_REL_TOL)
    return Node._apply_floating_point_range(fake, p, d.floating_point_range[0]).successful


def valid(key: str, value) -> bool:
    try:
        config_from_dict(apply_overrides(config_to_dict(SimpleBevConfig()), {key: value}))
    except ConfigError:
        return False
    return True


def samples(d) -> list:
    if d.integer_range:
        r = d.integer_range[0]
        lo, hi, step = r.from_value, r.to_value, r.step
        values = {lo - 2, lo - 1, lo, lo + 1, lo + 2, lo + 3, lo + step, lo + 2 * step,
                  lo + 10 * step, lo + 10 * step + 1, 1000, 1001, hi - 2, hi - 1, hi}
        return sorted(v for v in values if INT64[0] <= v <= INT64[1])
    r = d.floating_point_range[0]
    lo, hi = r.from_value, r.to_value
    return [lo, math.nextafter(lo, -math.inf), lo - 1e-3, lo + 1e-9, 0.5, 1.0, 7.5, 1e9, hi]


RANGED = [k for k, d in descriptors().items() if d.integer_range or d.floating_point_range]


def test_runtime_keys_have_ranges_where_one_can_state_the_rule():
    assert {"postprocess.nms_kernel", "postprocess.min_pixels", "postprocess.max_instances",
            "postprocess.offset_scale"} <= set(RANGED)
    d = descriptors()
    for key in ("postprocess.seg_threshold", "postprocess.center_threshold"):
        # (0, 1) is open: a closed ROS range would admit 0 and 1, which validation refuses.
        assert not d[key].floating_point_range and d[key].additional_constraints == "in (0, 1)"


@pytest.mark.parametrize("key", RANGED)
def test_range_admits_exactly_the_valid_values(key):
    d = params.descriptor(key, DEFAULTS[key])
    for value in samples(d):
        assert ros_admits(d, key, value) == valid(key, value), (key, value)


def test_nms_kernel_range_is_the_odd_sizes():
    d = params.descriptor("postprocess.nms_kernel", 5)
    r = d.integer_range[0]
    assert (r.from_value, r.step) == (1, 2) and r.to_value % 2 == 1
    assert not d.read_only
    for k in range(-2, 30):
        assert ros_admits(d, "postprocess.nms_kernel", k) == valid("postprocess.nms_kernel", k)
        assert valid("postprocess.nms_kernel", k) == (k > 0 and k % 2 == 1)


def test_descriptions_are_the_key_docs_and_rules():
    shipped = describe_keys()
    for key, d in descriptors().items():
        assert d.description == key_docs()[key] == shipped[key], key
        assert d.additional_constraints == key_rule(key), key
        assert d.read_only == (not key.startswith(params.RUNTIME_PREFIX)), key
    assert "auto | cpu | cuda | cuda:N" in descriptors()["node.device"].additional_constraints
