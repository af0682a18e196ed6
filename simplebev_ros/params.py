"""The config as ROS parameters: every key of config/simplebev.yaml declared with a descriptor
(its comment from the shipped file, read-only unless it may change at run time, ranges), read
back into a validated SimpleBevConfig. Only `postprocess.*` changes at run time; everything
else needs a restart (the model, the grid and the subscriptions are built from it).

`checkpoint` and `device` are short top-level aliases of node.checkpoint and node.device for
the command line and the launch file (`-p checkpoint:=PATH`); set, they win.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from simplebev_core.config import (ConfigError, PostprocessConfig, SimpleBevConfig,
                                   config_from_dict, describe_keys, flatten_config)

RUNTIME_PREFIX = "postprocess."
ALIASES = {"checkpoint": "node.checkpoint", "device": "node.device"}
# Parameters every rclpy node owns, or that ROS tooling adds; never "unknown".
ROS_OWNED = ("use_sim_time", "start_type_description_service", "qos_overrides.")
_RANGES = {"postprocess.seg_threshold": (0.0, 1.0), "postprocess.center_threshold": (0.0, 1.0),
           "postprocess.nms_kernel": (1, 99), "postprocess.min_pixels": (1, 100000),
           "postprocess.max_instances": (1, 100000), "postprocess.offset_scale": (0.0, 10.0)}


def _descriptor(key: str, description: str) -> ParameterDescriptor:
    runtime = key.startswith(RUNTIME_PREFIX)
    d = ParameterDescriptor(description=description or key, read_only=not runtime)
    if key in _RANGES:
        lo, hi = _RANGES[key]
        if isinstance(lo, float):
            d.floating_point_range = [FloatingPointRange(from_value=lo, to_value=hi, step=0.0)]
        else:
            d.integer_range = [IntegerRange(from_value=lo, to_value=hi, step=1)]
    return d


def declare(node: Any, defaults: SimpleBevConfig) -> list[str]:
    """Declare every config key (and the aliases); returns the config keys in order."""
    from rclpy.exceptions import InvalidParameterTypeException

    descriptions = describe_keys()
    keys = list(flatten_config(defaults).items())
    for key, value in keys:
        try:
            node.declare_parameter(key, value, _descriptor(key, descriptions.get(key, "")))
        except InvalidParameterTypeException as e:
            hint = " (write floats with a decimal point)" if isinstance(value, float) else ""
            raise ConfigError(f"config key '{key}': the params file gives a value of the wrong "
                              f"type ({e}); expected {type(value).__name__}{hint}") from None
    for alias, target in ALIASES.items():
        node.declare_parameter(alias, "", ParameterDescriptor(
            description=f"overrides {target} when not empty", read_only=True))
    return [k for k, _ in keys]


def unknown_overrides(node: Any, keys: list[str]) -> list[str]:
    """Parameters given (params file, -p) that the node does not know: misspelt keys."""
    given = getattr(node, "_parameter_overrides", {})
    known = set(keys) | set(ALIASES)
    return sorted(k for k in given if k not in known and not k.startswith(ROS_OWNED))


def _plain(value: Any) -> Any:
    return list(value) if not isinstance(value, (str, bytes, bool, int, float)) else value


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        section, name = key.split(".", 1)
        nested.setdefault(section, {})[name] = value
    return nested


def read(node: Any, keys: list[str]) -> SimpleBevConfig:
    """The node's parameters as a validated config (ConfigError naming the key otherwise)."""
    flat = {k: _plain(node.get_parameter(k).value) for k in keys}
    for alias, target in ALIASES.items():
        value = node.get_parameter(alias).value
        if value:
            flat[target] = value
    return config_from_dict(unflatten(flat))


def postprocess_update(current: PostprocessConfig, params: list[Any]) -> PostprocessConfig:
    """The postprocess config after a parameter change; raises ConfigError with the reason."""
    hints = typing.get_type_hints(PostprocessConfig)
    changes = {}
    for p in params:
        name = p.name[len(RUNTIME_PREFIX):]
        value = p.value
        if hints[name] is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, hints[name]) or isinstance(value, bool) != (hints[name] is bool):
            raise ConfigError(f"config key '{p.name}': expected {hints[name].__name__}, "
                              f"got {value!r}")
        changes[name] = value
    updated = dataclasses.replace(current, **changes)
    updated.validate("postprocess")
    return updated
