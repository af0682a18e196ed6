"""The radar reader against the nuScenes devkit's own reader, on files in nuScenes' format."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.radar_io import RADAR_FIELDS, read_radar_pcd

pytest.importorskip("nuscenes", reason="the comparison reads the files with the nuScenes devkit")


def devkit_points(path: Path) -> np.ndarray:
    """(N, 18) as the devkit reads the file with every filter open (upstream's setting)."""
    from nuscenes.utils.data_classes import RadarPointCloud

    cloud = RadarPointCloud.from_file(str(path), invalid_states=list(range(18)),
                                      dynprop_states=list(range(8)), ambig_states=list(range(5)))
    return cloud.points.T.astype(np.float32)


def test_every_radar_file_of_the_synthetic_world_reads_as_the_devkit_reads_it(synthetic_dataroot):
    dataroot, _ = synthetic_dataroot
    files = sorted((dataroot / "sweeps").glob("RADAR_*/*.pcd")) + sorted(
        (dataroot / "samples").glob("RADAR_*/*.pcd"))
    assert len(files) >= 20, f"expected radar files under {dataroot}, found {len(files)}"
    points = 0
    for path in files:
        ours, theirs = read_radar_pcd(path), devkit_points(path)
        assert ours.shape == theirs.shape and ours.shape[1] == len(RADAR_FIELDS), path.name
        np.testing.assert_array_equal(ours, theirs, err_msg=path.name)
        points += len(ours)
    assert points > 100, "the comparison needs real returns"


def test_empty_sweep_placeholder_reads_as_no_points(tmp_path):
    """nuScenes writes an empty sweep as a single NaN point; the devkit returns no points."""
    from training.synthetic.radar import PCD_DTYPE, write_pcd

    path = tmp_path / "empty.pcd"
    write_pcd(path, np.zeros(0, PCD_DTYPE))
    assert devkit_points(path).shape == (0, 18)
    assert read_radar_pcd(path).shape == (0, 18)


def test_non_finite_rows_are_dropped_and_the_rest_kept(tmp_path):
    from training.synthetic.radar import PCD_DTYPE, write_pcd

    points = np.zeros(3, PCD_DTYPE)
    points["x"] = [5.0, np.nan, 7.0]
    points["rcs"] = [1.0, 2.0, np.inf]
    points["vx_comp"] = [0.5, 0.0, 0.0]
    path = tmp_path / "mixed.pcd"
    write_pcd(path, points)
    got = read_radar_pcd(path)
    assert got.shape == (1, 18)
    assert got[0, RADAR_FIELDS.index("x")] == 5.0 and got[0, RADAR_FIELDS.index("vx_comp")] == 0.5
