"""Hand-scheduled input streams for node tests: the tiny bag's camera sets, shifted in time and
re-ordered (TF before, after or interleaved with the images), with hand-made defects.

A `Recorded`'s own stamp_ns is when the player publishes it (its schedule); the header stamps
inside its CDR are what the node sees. Shifting a set by a constant moves both its header
stamps and its transforms' stamps, so every relative time and every pose stays identical and
the node must produce the identical grid."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from simplebev_ros.replay import Recorded
from training import bag_messages as bm

S = 1_000_000_000
MS = 1_000_000
TF = "tf2_msgs/msg/TFMessage"


def decode(rec: Recorded) -> Any:
    return bm.TYPESTORE.deserialize_cdr(rec.cdr, rec.msgtype)


def encode(msg: Any, rec: Recorded, at_ns: int) -> Recorded:
    return Recorded(at_ns, rec.topic, rec.msgtype,
                    bytes(bm.TYPESTORE.serialize_cdr(msg, rec.msgtype)))


def _shift_stamp(stamp: Any, offset_ns: int) -> Any:
    return bm.stamp(stamp.sec * S + stamp.nanosec + offset_ns)


def shifted(rec: Recorded, offset_ns: int, at_ns: int,
            edit: Callable[[Any], None] | None = None) -> Recorded:
    """`rec` with every header stamp moved by offset_ns, published at at_ns; `edit` may change
    the message first."""
    msg = decode(rec)
    if rec.msgtype == TF:
        for t in msg.transforms:
            t.header.stamp = _shift_stamp(t.header.stamp, offset_ns)
    else:
        msg.header.stamp = _shift_stamp(msg.header.stamp, offset_ns)
    if edit is not None:
        edit(msg)
    return encode(msg, rec, at_ns)


@dataclass
class CameraSet:
    """One keyframe of the bag: per camera (in the config's order) its CameraInfo, image and
    the /tf at its stamp; `stamp_ns` is the reference camera's (the grid's) stamp."""

    infos: list[Recorded]
    images: list[Recorded]
    tfs: list[Recorded]
    stamps: list[int]
    stamp_ns: int


def camera_sets(messages: Sequence[Recorded], cameras: Sequence[str],
                ref_camera: str) -> list[CameraSet]:
    images = {c: [m for m in messages if m.topic == f"/{c}/image_rect_compressed"]
              for c in cameras}
    infos = {c: [m for m in messages if m.topic == f"/{c}/camera_info"] for c in cameras}
    tf_at = {}
    for m in messages:
        if m.topic == "/tf":
            stamp = decode(m).transforms[0].header.stamp
            tf_at[stamp.sec * S + stamp.nanosec] = m
    out = []
    for k in range(len(images[ref_camera])):
        imgs = [images[c][k] for c in cameras]
        stamps = [_header_ns(m) for m in imgs]
        out.append(CameraSet([infos[c][k] for c in cameras], imgs, [tf_at[s] for s in stamps],
                             stamps, stamps[list(cameras).index(ref_camera)]))
    return out


def _header_ns(rec: Recorded) -> int:
    stamp = decode(rec).header.stamp
    return stamp.sec * S + stamp.nanosec


ORDERS = ("tf_first", "tf_after", "interleaved")


def set_stream(cs: CameraSet, offset_ns: int, at_ns: int, order: str) -> list[Recorded]:
    """One camera set published from at_ns, cameras in stamp order (as they fire), with the
    /tf at each camera's stamp sent in stamp order (as a localiser publishes): all of them 10 ms
    before the images ("tf_first"), 0-100 ms after them ("tf_after"), or each right before its
    camera's image ("interleaved"); each camera's CameraInfo just before its image."""
    out = []
    for rank, i in enumerate(sorted(range(len(cs.images)), key=lambda i: cs.stamps[i])):
        image_at = at_ns + rank * MS
        tf_at = {"tf_first": at_ns - 10 * MS + rank * 10_000,
                 "tf_after": image_at + 20 * rank * MS,
                 "interleaved": image_at - 100_000}[order]
        out += [shifted(cs.tfs[i], offset_ns, tf_at),
                shifted(cs.infos[i], offset_ns, image_at - 50_000),
                shifted(cs.images[i], offset_ns, image_at)]
    return sorted(out, key=lambda r: r.stamp_ns)


def nan_translation(msg: Any) -> None:
    msg.transforms[0].transform.translation.x = math.nan


def zero_quaternion(msg: Any) -> None:
    q = msg.transforms[0].transform.rotation
    q.x = q.y = q.z = q.w = 0.0
