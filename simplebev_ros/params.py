"""The config as ROS parameters: every key of config/simplebev.yaml declared with a descriptor
derived from the key's definition in simplebev_core.config (description: its documentation;
additional_constraints: its valid values in words; a range where a ROS range admits exactly the
values validation admits; read-only unless it may change at run time), read back into a
validated SimpleBevConfig. Only `postprocess.*` changes at run time; everything
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
                                   config_from_dict, flatten_config, key_docs, key_rule,
                                   ros_range)
from simplebev_core.device import DEVICE_SPECS

RUNTIME_PREFIX = "postprocess."
ALIASES = {"checkpoint": "node.checkpoint", "device": "node.device"}
# Parameters every rclpy node owns, or that ROS tooling adds; never "unknown".
ROS_OWNED = ("use_sim_time", "start_type_description_service", "qos_overrides.")
ALIAS_CONSTRAINTS = {"checkpoint": "", "device": f"empty or {DEVICE_SPECS}"}


def descriptor(key: str, value: Any) -> ParameterDescriptor:
    """The descriptor of config key `key` (default `value`), from its KeySpec and docs."""
    d = ParameterDescriptor(description=key_docs()[key] or key,
                            read_only=not key.startswith(RUNTIME_PREFIX),
                            additional_constraints=key_rule(key))
    kind = type(value)
    span = ros_range(key, kind) if kind in (int, float) else None
    if span is not None:
        lo, hi, step = span
        if kind is float:
            d.floating_point_range = [FloatingPointRange(from_value=lo, to_value=hi, step=step)]
        else:
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi),
                                            step=int(step))]
    return d


def declare(node: Any, defaults: SimpleBevConfig) -> list[str]:
    """Declare every config key (and the aliases); returns the config keys in order."""
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException

    keys = list(flatten_config(defaults).items())
    for key, value in keys:
        d = descriptor(key, value)
        try:
            node.declare_parameter(key, value, d)
        except InvalidParameterTypeException as e:
            hint = " (write floats with a decimal point)" if isinstance(value, float) else ""
            raise ConfigError(f"config key '{key}': the params file gives a value of the wrong "
                              f"type ({e}); expected {type(value).__name__}{hint}") from None
        except InvalidParameterValueException as e:  # outside the descriptor's range
            raise ConfigError(f"config key '{key}': must be {d.additional_constraints} "
                              f"({e})") from None
    for alias, target in ALIASES.items():
        node.declare_parameter(alias, "", ParameterDescriptor(
            description=f"overrides {target} when not empty", read_only=True,
            additional_constraints=ALIAS_CONSTRAINTS[alias]))
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
