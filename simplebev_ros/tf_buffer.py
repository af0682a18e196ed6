"""A transform buffer behind a small interface: tf2_ros's Buffer where it is importable, the
project's own `TfBuffer` otherwise (pip-only ROS 2 has no tf2_ros).

Interface (both implementations):
    add_message(msg, static)                 a tf2_msgs/TFMessage from /tf or /tf_static
    lookup(target, source, stamp_ns)         target_T_source, (4, 4) float64 torch tensor
    clear()                                  forget dynamic transforms (time jumped backwards)
Errors mirror tf2's: `LookupException` (unknown frame), `ConnectivityException` (frames in
disconnected trees), `ExtrapolationException` (a time outside the buffered range by more than
the tolerance), all subclasses of `TransformException`.

Own buffer: static edges are stored as matrices; dynamic edges keep their stamped poses within
a cache window (`cache_s`) and are interpolated between stamps (linear translation, slerp).
A lookup at a stored stamp returns the stored transform exactly, so the node's extrinsics are
bit-identical to the training loader's, which reads the same poses from nuScenes tables.
Within `tolerance_s` past either end the nearest transform is used.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from simplebev_core.geometry import invert_rigid, pose_to_matrix

from .stamps import stamp_to_ns


class TransformException(RuntimeError):
    """A transform cannot be looked up."""


class LookupException(TransformException):
    """A frame is unknown to the buffer."""


class ConnectivityException(TransformException):
    """Both frames are known, but not in one tree."""


class ExtrapolationException(TransformException):
    """The lookup time lies outside the buffered range (past or future)."""


def transform_to_matrix(transform: Any) -> Tensor:
    """geometry_msgs/Transform (translation, rotation xyzw) -> parent_T_child (4, 4) float64."""
    t, q = transform.translation, transform.rotation
    return pose_to_matrix(torch.tensor([t.x, t.y, t.z], dtype=torch.float64),
                          torch.tensor([q.w, q.x, q.y, q.z], dtype=torch.float64))


def _slerp_wxyz(q0: Tensor, q1: Tensor, a: float) -> Tensor:
    dot = float(q0 @ q1)
    if dot < 0.0:  # the shorter arc
        q1, dot = -q1, -dot
    if dot > 0.9995:  # nearly parallel: normalised lerp is exact enough and stable
        q = q0 + a * (q1 - q0)
        return q / q.norm()
    theta = math.acos(dot)
    return (math.sin((1 - a) * theta) * q0 + math.sin(a * theta) * q1) / math.sin(theta)


@dataclass
class _Dynamic:
    parent: str
    stamps_ns: list[int] = field(default_factory=list)
    translations: list[Tensor] = field(default_factory=list)  # (3,) float64
    quats_wxyz: list[Tensor] = field(default_factory=list)  # (4,) float64
    matrices: list[Tensor] = field(default_factory=list)  # parent_T_child at each stamp


class TfBuffer:
    """The project's transform buffer (see the module docstring)."""

    def __init__(self, cache_s: float = 10.0, tolerance_s: float = 0.0):
        self.cache_ns = int(cache_s * 1e9)
        self.tolerance_ns = int(tolerance_s * 1e9)
        self._static: dict[str, tuple[str, Tensor]] = {}
        self._dynamic: dict[str, _Dynamic] = {}

    # ------------------------------------------------------------------ input
    def add_message(self, msg: Any, static: bool) -> None:
        for ts in msg.transforms:
            self.add(ts.header.frame_id, ts.child_frame_id, stamp_to_ns(ts.header.stamp),
                     ts.transform, static)

    def add(self, parent: str, child: str, stamp_ns: int, transform: Any, static: bool) -> None:
        parent, child = parent.lstrip("/"), child.lstrip("/")
        if not parent or not child or parent == child:
            raise TransformException(f"invalid transform '{parent}' -> '{child}'")
        if static:
            self._static[child] = (parent, transform_to_matrix(transform))
            self._dynamic.pop(child, None)
            return
        edge = self._dynamic.get(child)
        if edge is None or edge.parent != parent:  # a new edge, or the child was re-parented
            edge = self._dynamic[child] = _Dynamic(parent)
            self._static.pop(child, None)
        t, q = transform.translation, transform.rotation
        translation = torch.tensor([t.x, t.y, t.z], dtype=torch.float64)
        quat = torch.tensor([q.w, q.x, q.y, q.z], dtype=torch.float64)
        i = bisect.bisect_left(edge.stamps_ns, stamp_ns)
        if i < len(edge.stamps_ns) and edge.stamps_ns[i] == stamp_ns:  # same stamp: replace
            edge.translations[i], edge.quats_wxyz[i] = translation, quat
            edge.matrices[i] = pose_to_matrix(translation, quat)
        else:
            edge.stamps_ns.insert(i, stamp_ns)
            edge.translations.insert(i, translation)
            edge.quats_wxyz.insert(i, quat)
            edge.matrices.insert(i, pose_to_matrix(translation, quat))
        self._prune(edge)

    def _prune(self, edge: _Dynamic) -> None:
        cut = bisect.bisect_left(edge.stamps_ns, edge.stamps_ns[-1] - self.cache_ns)
        if cut:
            for name in ("stamps_ns", "translations", "quats_wxyz", "matrices"):
                del getattr(edge, name)[:cut]

    def clear(self) -> None:
        """Forget dynamic transforms (static ones stay: they are not time-bound)."""
        self._dynamic.clear()

    # ------------------------------------------------------------------ lookup
    def frames(self) -> set[str]:
        names = set(self._static) | set(self._dynamic)
        names |= {p for p, _ in self._static.values()} | {e.parent for e in self._dynamic.values()}
        return names

    def _parent(self, frame: str) -> str | None:
        if frame in self._static:
            return self._static[frame][0]
        if frame in self._dynamic:
            return self._dynamic[frame].parent
        return None

    def _edge(self, child: str, stamp_ns: int) -> Tensor:
        """parent_T_child at stamp_ns."""
        if child in self._static:
            return self._static[child][1]
        edge = self._dynamic[child]
        stamps = edge.stamps_ns
        i = bisect.bisect_left(stamps, stamp_ns)
        if i < len(stamps) and stamps[i] == stamp_ns:
            return edge.matrices[i]
        if i == 0 or i == len(stamps):
            nearest = 0 if i == 0 else len(stamps) - 1
            gap = abs(stamps[nearest] - stamp_ns)
            if gap <= self.tolerance_ns:
                return edge.matrices[nearest]
            when = "past" if i == 0 else "future"
            raise ExtrapolationException(
                f"lookup of '{edge.parent}' -> '{child}' at {stamp_ns * 1e-9:.6f} s would require "
                f"extrapolation into the {when} by {gap * 1e-9:.3f} s (buffered "
                f"{stamps[0] * 1e-9:.6f} to {stamps[-1] * 1e-9:.6f} s)")
        a = (stamp_ns - stamps[i - 1]) / (stamps[i] - stamps[i - 1])
        translation = (1 - a) * edge.translations[i - 1] + a * edge.translations[i]
        return pose_to_matrix(translation,
                              _slerp_wxyz(edge.quats_wxyz[i - 1], edge.quats_wxyz[i], a))

    def _chain(self, frame: str) -> list[str]:
        """frame, its parent, ..., its root."""
        chain = [frame]
        while (parent := self._parent(chain[-1])) is not None:
            if parent in chain:
                raise TransformException(f"transform loop through '{parent}'")
            chain.append(parent)
        return chain

    def _up_to(self, chain: list[str], ancestor: str, stamp_ns: int) -> Tensor | None:
        """ancestor_T_frame along `chain` (None when frame is the ancestor itself)."""
        out = None
        for child in chain[:chain.index(ancestor)][::-1]:  # from the ancestor down
            edge = self._edge(child, stamp_ns)
            out = edge if out is None else out @ edge
        return out

    def lookup(self, target: str, source: str, stamp_ns: int) -> Tensor:
        """target_T_source at stamp_ns, (4, 4) float64."""
        target, source = target.lstrip("/"), source.lstrip("/")
        known = self.frames()
        for frame in (target, source):
            if frame not in known:
                raise LookupException(f"frame '{frame}' does not exist in the TF tree "
                                      f"(known: {sorted(known)})")
        if target == source:
            return torch.eye(4, dtype=torch.float64)
        up_source, up_target = self._chain(source), self._chain(target)
        common = next((f for f in up_source if f in up_target), None)
        if common is None:
            raise ConnectivityException(
                f"frames '{target}' and '{source}' are not connected (roots '{up_target[-1]}' and "
                f"'{up_source[-1]}')")
        common_T_source = self._up_to(up_source, common, stamp_ns)
        common_T_target = self._up_to(up_target, common, stamp_ns)
        if common_T_target is None:
            return common_T_source
        target_T_common = invert_rigid(common_T_target)
        return target_T_common if common_T_source is None else target_T_common @ common_T_source

    def can_transform(self, target: str, source: str, stamp_ns: int) -> bool:
        try:
            self.lookup(target, source, stamp_ns)
        except TransformException:
            return False
        return True


class Tf2RosBuffer:
    """tf2_ros.Buffer behind the same interface (used where tf2_ros is importable). tf2 has no
    extrapolation tolerance: a lookup within `tolerance_s` outside the buffered range is retried
    at the newest available time ('time 0')."""

    def __init__(self, cache_s: float = 10.0, tolerance_s: float = 0.0):
        import tf2_ros
        from rclpy.duration import Duration

        self._tf2 = tf2_ros
        self._buffer = tf2_ros.Buffer(cache_time=Duration(seconds=cache_s))
        self.tolerance_ns = int(tolerance_s * 1e9)

    def add_message(self, msg: Any, static: bool) -> None:
        for ts in msg.transforms:
            if static:
                self._buffer.set_transform_static(ts, "simplebev")
            else:
                self._buffer.set_transform(ts, "simplebev")

    def lookup(self, target: str, source: str, stamp_ns: int) -> Tensor:
        from rclpy.time import Time

        tf2 = self._tf2
        try:
            try:
                ts = self._buffer.lookup_transform(target, source, Time(nanoseconds=stamp_ns))
            except tf2.ExtrapolationException:
                latest = self._buffer.lookup_transform(target, source, Time())
                if abs(stamp_to_ns(latest.header.stamp) - stamp_ns) > self.tolerance_ns:
                    raise
                ts = latest
        except tf2.ExtrapolationException as e:
            raise ExtrapolationException(str(e)) from e
        except tf2.ConnectivityException as e:
            raise ConnectivityException(str(e)) from e
        except tf2.LookupException as e:
            raise LookupException(str(e)) from e
        except tf2.TransformException as e:
            raise TransformException(str(e)) from e
        return transform_to_matrix(ts.transform)

    def clear(self) -> None:
        self._buffer.clear()

    def frames(self) -> set[str]:
        import yaml

        tree = yaml.safe_load(self._buffer.all_frames_as_yaml()) or {}
        return set(tree) | {v.get("parent", "") for v in tree.values() if isinstance(v, dict)}


def make_tf_buffer(cache_s: float, tolerance_s: float) -> TfBuffer | Tf2RosBuffer:
    """tf2_ros's Buffer when importable, else the project's TfBuffer."""
    try:
        import tf2_ros  # noqa: F401
    except ImportError:
        return TfBuffer(cache_s, tolerance_s)
    return Tf2RosBuffer(cache_s, tolerance_s)
