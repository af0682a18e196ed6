"""One evaluated frame as a picture (simplebev_ros.evaluate's demo.png and demo.gif): each
camera's image nearest the frame, in rows of up to three, above the prediction and the ground
truth side by side (forward up, as simplebev_ros.conversions.bev_rgb draws them).

`compose` only arranges arrays, for any number of cameras; `frame_mosaic` finds and decodes the
images in a bag's messages.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from simplebev_core import ground_truth

from .conversions import bev_rgb, image_to_rgb
from .replay import Recorded, message_class

COLUMNS = 3  # nuScenes' six cameras: front row over back row
DIM_IGNORED = 40  # barely visible vehicles drawn dimmer than the others (ground truth 100)


def label(bgr: np.ndarray, text: str) -> np.ndarray:
    import cv2

    return cv2.putText(np.ascontiguousarray(bgr), text, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7,
                       (255, 255, 255), 2)


def camera_rows(images: Sequence[np.ndarray], width: int) -> np.ndarray:
    """(H, W, 3) images (at least one) -> one picture about `width` wide: min(n, COLUMNS)
    columns, as many rows as the count needs. Each image is scaled to the column width; a row
    is as tall as its tallest image, and the rest of a place stays black."""
    import cv2

    columns = min(len(images), COLUMNS)
    tile_w = width // columns
    scaled = [cv2.resize(im, (tile_w, max(1, round(tile_w * im.shape[0] / im.shape[1]))))
              for im in images]
    rows = []
    for start in range(0, len(scaled), columns):
        row = scaled[start:start + columns]
        picture = np.zeros((max(t.shape[0] for t in row), columns * tile_w, 3), np.uint8)
        for k, tile in enumerate(row):
            picture[:tile.shape[0], k * tile_w:(k + 1) * tile_w] = tile
        rows.append(picture)
    return np.concatenate(rows, axis=0)


def stack(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Pictures one above the other, narrower ones padded black on the right."""
    width = max(p.shape[1] for p in parts)
    return np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0)))
                           for p in parts], axis=0)


def compose(cameras: Sequence[tuple[str, np.ndarray | None]], pred: np.ndarray | None,
            gt: np.ndarray, width: int = 1200) -> np.ndarray:
    """(name, BGR image or None) per camera, the node's grid values (None: no grid came) and
    the ground-truth codes (both (height, width) int8 on the base grid) -> (H, W, 3) uint8
    RGB."""
    import cv2

    present = [image for _, image in cameras if image is not None]
    blank = np.zeros(present[0].shape if present else (225, 400, 3), np.uint8)
    top = camera_rows([label(blank.copy(), f"{name}: no image") if image is None
                       else label(image.copy(), name) for name, image in cameras], width)
    shown_gt = gt.copy()
    shown_gt[gt == ground_truth.IGNORED] = DIM_IGNORED
    side = top.shape[1] // 2
    bev = []
    for name, values in (("prediction", pred), ("ground truth", shown_gt)):
        rgb = bev_rgb(values if values is not None else np.full_like(gt, -1))
        tile = cv2.resize(rgb[:, :, ::-1], (side, side), interpolation=cv2.INTER_NEAREST)
        bev.append(label(tile, name))
    picture = stack([top, np.concatenate(bev, axis=1)])
    return np.ascontiguousarray(picture[:, :, ::-1])


def decode_thumbnail(m: Recorded) -> np.ndarray:
    """A recorded CompressedImage or Image -> BGR at a quarter of its size."""
    import cv2
    from rclpy.serialization import deserialize_message

    msg = deserialize_message(m.cdr, message_class(m.msgtype))
    if m.msgtype == "sensor_msgs/msg/CompressedImage":
        return cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_REDUCED_COLOR_4)
    rgb = image_to_rgb(msg)
    small = cv2.resize(rgb, (max(1, rgb.shape[1] // 4), max(1, rgb.shape[0] // 4)),
                       interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(small[:, :, ::-1])


def frame_mosaic(messages: Sequence[Recorded], stamp_ns: int, pred: np.ndarray | None,
                 gt: np.ndarray, cameras: Sequence[str], image_topic: Any,
                 width: int = 1200) -> np.ndarray:
    """The picture of the frame at `stamp_ns`: each camera's image nearest it in time on
    `image_topic(camera)` (the node's config names the topics)."""
    shown = []
    for cam in cameras:
        topic = image_topic(cam)
        nearest = min((m for m in messages if m.topic == topic),
                      key=lambda m: abs(m.stamp_ns - stamp_ns), default=None)
        shown.append((cam, None if nearest is None else decode_thumbnail(nearest)))
    return compose(shown, pred, gt, width)
