"""The evaluation's demo picture (simplebev_ros.mosaic.compose) for rigs of any size: every
camera gets its place, in rows of up to three, above the prediction and the ground truth."""
from __future__ import annotations

import math

import numpy as np
import pytest

from simplebev_core import ground_truth
from simplebev_ros.mosaic import COLUMNS, compose


def solid(colour_bgr: tuple[int, int, int], height: int = 90, width: int = 160) -> np.ndarray:
    return np.broadcast_to(np.array(colour_bgr, np.uint8), (height, width, 3)).copy()


def colour_of(k: int) -> tuple[int, int, int]:
    """A distinct colour per camera, none of them black or white (the label's colours)."""
    return (20 + 30 * k, 200 - 20 * k, 60 + 10 * k)


@pytest.mark.parametrize("count", [1, 5, 7])
def test_every_camera_has_its_place_whatever_the_count(count):
    width = 1200
    cameras = [(f"CAM_{k}", solid(colour_of(k))) for k in range(count)]
    gt = np.zeros((40, 40), np.int8)
    gt[10:20, 10:20] = ground_truth.VEHICLE
    picture = compose(cameras, None, gt, width=width)

    columns = min(count, COLUMNS)
    tile_w = width // columns
    tile_h = round(tile_w * 90 / 160)
    rows = math.ceil(count / columns)
    side = columns * tile_w // 2
    assert picture.shape == (rows * tile_h + side, columns * tile_w, 3)
    assert picture.dtype == np.uint8
    for k in range(count):  # the middle of each place (the label is in its top-left corner)
        row, column = divmod(k, columns)
        middle = picture[row * tile_h + tile_h // 2, column * tile_w + tile_w // 2]
        assert tuple(middle) == colour_of(k)[::-1], k  # compose returns RGB
    empty_places = rows * columns - count
    for k in range(count, count + empty_places):  # the rest of the last row stays black
        row, column = divmod(k, columns)
        assert not picture[row * tile_h:(row + 1) * tile_h,
                           column * tile_w:(column + 1) * tile_w].any()


def test_cameras_of_other_sizes_and_without_images_keep_the_layout():
    """A taller image makes its row taller; a camera with no image gets a labelled black place;
    a width that does not divide by the columns still gives one picture."""
    cameras = [("CAM_A", solid(colour_of(0))), ("CAM_B", None),
               ("CAM_C", solid(colour_of(2), height=120, width=160)),
               ("CAM_D", solid(colour_of(3)))]
    picture = compose(cameras, np.full((30, 30), 100, np.int8), np.zeros((30, 30), np.int8),
                      width=1000)
    tile_w = 1000 // 3
    first_row_h, second_row_h = round(tile_w * 120 / 160), round(tile_w * 90 / 160)
    assert picture.shape == (first_row_h + second_row_h + (3 * tile_w) // 2, 3 * tile_w, 3)
    no_image = picture[:first_row_h, tile_w:2 * tile_w]
    assert no_image[:40].any() and not no_image[60:].any()  # its label, otherwise black
    assert tuple(picture[first_row_h + second_row_h // 2, tile_w // 2]) == colour_of(3)[::-1]
