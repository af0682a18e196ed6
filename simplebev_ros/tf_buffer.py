"""A transform buffer behind a small interface: tf2_ros's Buffer where it is importable, the
project's own `TfBuffer` otherwise (pip-only ROS 2 has no tf2_ros).

Interface (both implementations):
    add_message(msg, static) -> [TfEvent]      a tf2_msgs/TFMessage from /tf or /tf_static
    lookup(target, source, stamp_ns, tolerance_ns=0)
                                               target_T_source, (4, 4) float64 torch tensor
    can_transform(target, source, stamp_ns)    exact: no tolerance
    clear()                                    forget dynamic transforms, keep static ones
    frames()                                   every frame named so far
Errors mirror tf2's: `LookupException` (unknown frame), `ConnectivityException` (frames in
disconnected trees), `ExtrapolationException` (a time outside the buffered range by more than
the tolerance), all subclasses of `TransformException`.

As in tf2 (ros2/geometry2, tf2/src/buffer_core.cpp and cache.cpp):
- A transform is rejected at insertion (event "bad_tf") when a frame id is empty, the two
  frame ids are equal, a value is not finite, or the quaternion's squared norm differs from 1
  by 10e-3 (tf2's QUATERNION_NORMALIZATION_TOLERANCE) or more. Valid quaternions are
  normalised. Every valid transform of a message is stored even when others in it are not.
- Each parent -> child edge has its own cache. Static edges have no time. Dynamic edges keep
  their stamps within `cache_s` of the edge's newest and are interpolated between the two
  stamps around the requested time (linear translation, exact slerp); a lookup outside the range
  raises ExtrapolationException (past or future).
- Time 0 means the latest common time of the chain: the newest stamp at which every dynamic
  edge on the path has data, i.e. the oldest of their newest stamps. Static chains need none.

Deliberate differences from tf2, and why:
- Infinite values are rejected as well as NaN (tf2 tests for NaN only): an infinite
  translation reaches the model just as a NaN does.
- The quaternion test applies to the message's own quaternion. ROS 2's tf2 converts it to a
  rotation matrix first, which normalises it, so in practice it accepts any non-zero
  quaternion; far-from-unit quaternions are corrupt data, and ROS 1's tf2 rejected them.
- Old stamps are judged per edge (tf2 only drops data older than the cache window, and
  tf2_ros clears the whole buffer when the ROS clock jumps back; the node sees no clock jump
  when a bag loops without /clock or a localiser restarts). A transform more than
  BACKWARDS_JUMP_NS behind its edge's newest stamp is held, not stored. If the edge's next
  transform is as far behind and not older than the held one, the edge has restarted on an
  earlier timeline: its data is dropped, both are stored (event "tf_time_jump"). Otherwise
  the held transform was isolated (e.g. another node broadcasting the edge with stamp 0): it
  is dropped (event "old_tf"). Transforms less far behind are stored in stamp order
  (out-of-order delivery).
- `lookup` takes a tolerance (tf2 has none): within `tolerance_ns` past either end of an
  edge's range the nearest stored transform is used. `can_transform` stays exact.
- A transform repeating a stored stamp replaces it (tf2 keeps both unless identical, and its
  lookups then return the later one: the same result). A child given a new parent starts a
  new edge (tf2 keeps one cache per child and does not interpolate across parents).
A lookup at a stored stamp returns the stored transform exactly, built from the message's
pose as the training loader builds nuScenes poses (`pose_to_matrix`), so the node's extrinsics
are bit-identical to the loader's.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from simplebev_core.geometry import invert_rigid, pose_to_matrix

from .stamps import BACKWARDS_JUMP_NS, stamp_to_ns

# tf2's bound on |w^2 + x^2 + y^2 + z^2 - 1| (buffer_core.cpp, QUATERNION_NORMALIZATION_TOLERANCE)
QUATERNION_NORM_TOLERANCE = 10e-3
AUTHORITY = "simplebev"


class TransformException(RuntimeError):
    """A transform cannot be looked up."""


class LookupException(TransformException):
    """A frame is unknown to the buffer."""


class ConnectivityException(TransformException):
    """Both frames are known, but not in one tree."""


class ExtrapolationException(TransformException):
    """The lookup time lies outside the buffered range (past or future)."""


@dataclass(frozen=True)
class TfEvent:
    """Something add_message did not store as given: kind "bad_tf", "old_tf" or
    "tf_time_jump" (see the module docstring), and a sentence for the log."""
    kind: str
    text: str


def transform_to_matrix(transform: Any) -> Tensor:
    """geometry_msgs/Transform (translation, rotation xyzw) -> parent_T_child (4, 4) float64.
    The rotation is normalised (pose_to_matrix does it)."""
    t, q = transform.translation, transform.rotation
    return pose_to_matrix(torch.tensor([t.x, t.y, t.z], dtype=torch.float64),
                          torch.tensor([q.w, q.x, q.y, q.z], dtype=torch.float64))


def invalid_reason(parent: str, child: str, transform: Any) -> str | None:
    """Why tf2 would reject this transform (frame ids already stripped of '/'), or None."""
    edge = f"'{parent}' -> '{child}'"
    if not parent or not child:
        return f"transform {edge} has an empty frame id"
    if parent == child:
        return f"transform {edge} maps a frame to itself"
    t, q = transform.translation, transform.rotation
    values = [float(v) for v in (t.x, t.y, t.z, q.x, q.y, q.z, q.w)]
    if not all(math.isfinite(v) for v in values):
        return f"transform {edge} has a non-finite value (translation, rotation xyzw: {values})"
    norm2 = sum(v * v for v in values[3:])
    if not abs(norm2 - 1.0) < QUATERNION_NORM_TOLERANCE:
        return (f"transform {edge} has a quaternion of norm {math.sqrt(norm2):.6g}, not a "
                f"rotation (|norm^2 - 1| must be below {QUATERNION_NORM_TOLERANCE:g}, as in tf2)")
    return None


def _slerp_wxyz(q0: Tensor, q1: Tensor, a: float) -> Tensor:
    """Spherical interpolation between unit quaternions, along the shorter arc, exact at every
    angle as tf2's is (a normalised lerp for close quaternions would be off by ~1e-7 rad)."""
    if float(q0 @ q1) < 0.0:
        q1 = -q1
    # The angle between q0 and q1 as 4-vectors; atan2 keeps it accurate when it is tiny.
    theta = 2.0 * math.atan2(float((q1 - q0).norm()), float((q1 + q0).norm()))
    if theta == 0.0:
        return q0
    return (math.sin((1 - a) * theta) * q0 + math.sin(a * theta) * q1) / math.sin(theta)


_Stamped = tuple[int, Any]  # (stamp_ns, transform)


class _Timeline:
    """One dynamic edge's rule for stamps far behind its newest (the module docstring): which
    transforms to store, and whether the edge restarted. Items are opaque to it."""

    def __init__(self, name: str):
        self.name = name
        self.newest_ns: int | None = None
        self.held: _Stamped | None = None  # a jump candidate

    def admit(self, stamp_ns: int, item: Any) -> tuple[list[_Stamped], bool, TfEvent | None]:
        """-> ((stamp_ns, item) to store in this order, whether to forget the edge's data
        first, the event to report)."""
        newest = self.newest_ns
        if newest is None or stamp_ns >= newest - BACKWARDS_JUMP_NS:
            dropped, self.held = self.held, None
            self.newest_ns = stamp_ns if newest is None else max(newest, stamp_ns)
            return [(stamp_ns, item)], False, self._old(dropped)
        if self.held is not None and stamp_ns >= self.held[0]:
            store, self.held = [self.held, (stamp_ns, item)], None
            self.newest_ns = stamp_ns
            return store, True, TfEvent(
                "tf_time_jump", f"{self.name} restarted on an earlier timeline: "
                f"{newest * 1e-9:.3f} s -> {store[0][0] * 1e-9:.3f} s; its older transforms "
                "were dropped")
        dropped, self.held = self.held, (stamp_ns, item)
        return [], False, self._old(dropped)

    def _old(self, dropped: _Stamped | None) -> TfEvent | None:
        if dropped is None:
            return None
        return TfEvent("old_tf", f"dropped {self.name} stamped {dropped[0] * 1e-9:.3f} s: more "
                       f"than {BACKWARDS_JUMP_NS * 1e-9:g} s behind the edge's newest "
                       f"({self.newest_ns * 1e-9:.3f} s), and no newer transform followed it")


@dataclass
class _Dynamic:
    parent: str
    timeline: _Timeline
    stamps_ns: list[int] = field(default_factory=list)
    translations: list[Tensor] = field(default_factory=list)  # (3,) float64
    quats_wxyz: list[Tensor] = field(default_factory=list)  # (4,) float64, unit
    matrices: list[Tensor] = field(default_factory=list)  # parent_T_child at each stamp

    def forget(self) -> None:
        for name in ("stamps_ns", "translations", "quats_wxyz", "matrices"):
            getattr(self, name).clear()


class TfBuffer:
    """The project's transform buffer (see the module docstring)."""

    def __init__(self, cache_s: float = 10.0):
        self.cache_ns = int(cache_s * 1e9)
        self._static: dict[str, tuple[str, Tensor]] = {}
        self._dynamic: dict[str, _Dynamic] = {}

    # ------------------------------------------------------------------ input
    def add_message(self, msg: Any, static: bool) -> list[TfEvent]:
        events = [self.add(ts.header.frame_id, ts.child_frame_id, stamp_to_ns(ts.header.stamp),
                           ts.transform, static) for ts in msg.transforms]
        return [e for e in events if e is not None]

    def add(self, parent: str, child: str, stamp_ns: int, transform: Any,
            static: bool) -> TfEvent | None:
        """Store one transform; returns what happened when it was not simply stored."""
        parent, child = parent.lstrip("/"), child.lstrip("/")
        reason = invalid_reason(parent, child, transform)
        if reason is not None:
            return TfEvent("bad_tf", reason)
        if static:
            self._static[child] = (parent, transform_to_matrix(transform))
            self._dynamic.pop(child, None)
            return None
        edge = self._dynamic.get(child)
        if edge is None or edge.parent != parent:  # a new edge, or the child was re-parented
            edge = self._dynamic[child] = _Dynamic(parent, _Timeline(f"'{parent}' -> '{child}'"))
            self._static.pop(child, None)
        store, restart, event = edge.timeline.admit(stamp_ns, transform)
        if restart:
            edge.forget()
        for stamp, item in store:
            self._insert(edge, stamp, item)
        if store:
            self._prune(edge)
        return event

    def _insert(self, edge: _Dynamic, stamp_ns: int, transform: Any) -> None:
        t, q = transform.translation, transform.rotation
        translation = torch.tensor([t.x, t.y, t.z], dtype=torch.float64)
        quat = torch.tensor([q.w, q.x, q.y, q.z], dtype=torch.float64)
        # The matrix from the message's own quaternion (pose_to_matrix normalises it), as the
        # loader builds it: bit-identical at stored stamps. Slerp needs the unit quaternion.
        matrix = pose_to_matrix(translation, quat)
        quat = quat / quat.norm()
        i = bisect.bisect_left(edge.stamps_ns, stamp_ns)
        if i < len(edge.stamps_ns) and edge.stamps_ns[i] == stamp_ns:  # same stamp: replace
            edge.translations[i], edge.quats_wxyz[i], edge.matrices[i] = translation, quat, matrix
            return
        edge.stamps_ns.insert(i, stamp_ns)
        edge.translations.insert(i, translation)
        edge.quats_wxyz.insert(i, quat)
        edge.matrices.insert(i, matrix)

    def _prune(self, edge: _Dynamic) -> None:
        """Drop stamps more than the cache window behind the edge's newest (kept: exactly at)."""
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

    def _edge(self, child: str, stamp_ns: int, tolerance_ns: int) -> Tensor:
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
            if gap <= tolerance_ns:
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

    def _paths(self, target: str, source: str) -> tuple[list[str], list[str]]:
        """The children whose edges lead from source, and from target, up to their closest
        common ancestor (each list bottom-up)."""
        up_source, up_target = self._chain(source), self._chain(target)
        common = next((f for f in up_source if f in up_target), None)
        if common is None:
            raise ConnectivityException(
                f"frames '{target}' and '{source}' are not connected (roots '{up_target[-1]}' and "
                f"'{up_source[-1]}')")
        return up_source[:up_source.index(common)], up_target[:up_target.index(common)]

    def _latest_common_ns(self, children: list[str]) -> int:
        """tf2's time 0: the oldest of the newest stamps of the dynamic edges (0 when all
        edges are static, whose lookups ignore the time)."""
        return min((self._dynamic[c].stamps_ns[-1] for c in children if c in self._dynamic),
                   default=0)

    def _compose(self, children: list[str], stamp_ns: int, tolerance_ns: int) -> Tensor | None:
        """ancestor_T_frame along the bottom-up `children` (None when there is no edge)."""
        out = None
        for child in children[::-1]:  # from the ancestor down
            edge = self._edge(child, stamp_ns, tolerance_ns)
            out = edge if out is None else out @ edge
        return out

    def lookup(self, target: str, source: str, stamp_ns: int, tolerance_ns: int = 0) -> Tensor:
        """target_T_source at stamp_ns (0: the chain's latest common time), (4, 4) float64."""
        target, source = target.lstrip("/"), source.lstrip("/")
        known = self.frames()
        for frame in (target, source):
            if frame not in known:
                raise LookupException(f"frame '{frame}' does not exist in the TF tree "
                                      f"(known: {sorted(known)})")
        if target == source:
            return torch.eye(4, dtype=torch.float64)
        from_source, from_target = self._paths(target, source)
        if stamp_ns == 0:
            stamp_ns = self._latest_common_ns(from_source + from_target)
        common_T_source = self._compose(from_source, stamp_ns, tolerance_ns)
        common_T_target = self._compose(from_target, stamp_ns, tolerance_ns)
        if common_T_target is None:
            return common_T_source
        target_T_common = invert_rigid(common_T_target)
        return target_T_common if common_T_source is None else target_T_common @ common_T_source

    def can_transform(self, target: str, source: str, stamp_ns: int) -> bool:
        """Whether lookup succeeds at stamp_ns without any tolerance."""
        try:
            self.lookup(target, source, stamp_ns)
        except TransformException:
            return False
        return True


class Tf2RosBuffer:
    """tf2_ros.Buffer behind the same interface (used where tf2_ros is importable).

    Transforms are validated and normalised here, and old stamps judged per edge, before tf2
    sees them, so both buffers report the same events. tf2 cannot forget one edge: an edge's
    time jump clears every dynamic transform (as tf2_ros does on a clock jump). tf2 has no
    extrapolation tolerance: a lookup within `tolerance_ns` outside the buffered range is
    retried at the latest common time ('time 0')."""

    def __init__(self, cache_s: float = 10.0):
        import tf2_ros
        from rclpy.duration import Duration

        self._tf2 = tf2_ros
        self._buffer = tf2_ros.Buffer(cache_time=Duration(seconds=cache_s))
        self._timelines: dict[str, tuple[str, _Timeline]] = {}  # child -> (parent, timeline)

    def add_message(self, msg: Any, static: bool) -> list[TfEvent]:
        events = [self._add(ts, static) for ts in msg.transforms]
        return [e for e in events if e is not None]

    def _add(self, ts: Any, static: bool) -> TfEvent | None:
        parent, child = ts.header.frame_id.lstrip("/"), ts.child_frame_id.lstrip("/")
        reason = invalid_reason(parent, child, ts.transform)
        if reason is not None:
            return TfEvent("bad_tf", reason)
        ts = _normalised(ts)
        if static:
            self._timelines.pop(child, None)
            self._buffer.set_transform_static(ts, AUTHORITY)
            return None
        known = self._timelines.get(child)
        if known is None or known[0] != parent:
            known = self._timelines[child] = (parent, _Timeline(f"'{parent}' -> '{child}'"))
        store, restart, event = known[1].admit(stamp_to_ns(ts.header.stamp), ts)
        if restart:
            self._buffer.clear()
            self._timelines = {child: known}  # the other edges start afresh too
        for _, stored in store:
            self._buffer.set_transform(stored, AUTHORITY)
        return event

    def _time(self, stamp_ns: int) -> Any:
        from rclpy.time import Time

        return Time(nanoseconds=stamp_ns) if stamp_ns else Time()  # Time() is tf2's time 0

    def lookup(self, target: str, source: str, stamp_ns: int, tolerance_ns: int = 0) -> Tensor:
        tf2 = self._tf2
        try:
            try:
                ts = self._buffer.lookup_transform(target, source, self._time(stamp_ns))
            except tf2.ExtrapolationException:
                if stamp_ns == 0 or tolerance_ns <= 0:
                    raise
                latest = self._buffer.lookup_transform(target, source, self._time(0))
                if abs(stamp_to_ns(latest.header.stamp) - stamp_ns) > tolerance_ns:
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

    def can_transform(self, target: str, source: str, stamp_ns: int) -> bool:
        return bool(self._buffer.can_transform(target, source, self._time(stamp_ns)))

    def clear(self) -> None:
        self._buffer.clear()
        self._timelines.clear()

    def frames(self) -> set[str]:
        import yaml

        tree = yaml.safe_load(self._buffer.all_frames_as_yaml()) or {}
        return set(tree) | {v.get("parent", "") for v in tree.values() if isinstance(v, dict)}


def _normalised(ts: Any) -> Any:
    """A copy of a geometry_msgs/TransformStamped with its quaternion scaled to unit norm."""
    from geometry_msgs.msg import Quaternion, Transform, TransformStamped

    q = ts.transform.rotation
    norm = math.sqrt(q.x * q.x + q.y * q.y + q.z * q.z + q.w * q.w)
    rotation = Quaternion(x=q.x / norm, y=q.y / norm, z=q.z / norm, w=q.w / norm)
    return TransformStamped(header=ts.header, child_frame_id=ts.child_frame_id,
                            transform=Transform(translation=ts.transform.translation,
                                                rotation=rotation))


def make_tf_buffer(cache_s: float) -> TfBuffer | Tf2RosBuffer:
    """tf2_ros's Buffer when importable, else the project's TfBuffer."""
    try:
        import tf2_ros  # noqa: F401
    except ImportError:
        return TfBuffer(cache_s)
    return Tf2RosBuffer(cache_s)
