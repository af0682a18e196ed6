"""The tiny synthetic dataset is byte-for-byte reproducible: the sha256 of its tables, labels
and a few sensor files (seed 0) were recorded from the generator before its functions were split
into one function per section, so any change to the random draws' order or to what is written
shows up here. Takes ~10 s."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

pytest.importorskip("nuscenes", reason="the synthetic world is written for the nuScenes devkit")

from training.synthetic import generate  # noqa: E402

EXPECTED_SHA256 = {
    "synthetic_info.json":
        "f6d22210eab5f654089d7c276876cd6bc3af73924995358fb938c30533a82bba",
    "synthetic_labels/labels.json":
        "9183e7e18da39c20ad80f26b3865ab5abee12c0f2e01aae8275f00883bca2326",
    "v1.0-mini/attribute.json":
        "334af32a904439ca2c0607a407c61bcb4b9bca5a6c56672507874cc8c6af6337",
    "v1.0-mini/calibrated_sensor.json":
        "62fb5cdaefb34f83c09b6024495f422964884ecfc63830184c20437b9d44bbc9",
    "v1.0-mini/category.json":
        "978483be97a6b5714ff992ecf7e9cccaceb36f0da6bc742bed551dd2b3be49f0",
    "v1.0-mini/ego_pose.json":
        "2f11aff879a9d738a42b5ff140d6de3e80bf3fb1c6acf465d5a5aef3360c5f91",
    "v1.0-mini/instance.json":
        "53fb5449d14278ffe4d14ba0385414b96b24f7906d827a227dbe1f2b7f22cb89",
    "v1.0-mini/log.json":
        "4fe14e80367935685f1e3bc4236160a5ee4115d9a902e35e17c7b34b951889fc",
    "v1.0-mini/map.json":
        "d8c4cee4f5430736051c2edf2eceb3df6459d696042d2b3a4b055d1c4773a7c3",
    "v1.0-mini/sample.json":
        "5c7999fd817dfba904cb0d6669a40189186c356d30e9431757f6b694c817812f",
    "v1.0-mini/sample_annotation.json":
        "f9a27258db3844ba122fc9fd34583e33724541b338becb1b0a6f92ea03f83366",
    "v1.0-mini/sample_data.json":
        "5c1776e485b501f046e0c14ca402e934df629c9bd3d4d85798910553100accfa",
    "v1.0-mini/scene.json":
        "3b3bd324ad2e66ab23bc782163665fb670475df3b501a69ece63dbfe873d1ce5",
    "v1.0-mini/sensor.json":
        "2c6f4150784a682f0d2d01f653cedcf9579fe2ddd8d843074252fd541bee8548",
    "v1.0-mini/visibility.json":
        "f94318d18c8fdc649f438540eaea6439ae1487bfa7fe387f11964f6cc4ef7917",
    "samples/CAM_BACK/"
    "n000-synthetic-0-scene-0061__CAM_BACK__1533000000887624.jpg":
        "2afd34827ca80bb20e830047c7b365f3025f3f4edd4ef6d322072e475d4409e1",
    "samples/CAM_FRONT/"
    "n000-synthetic-0-scene-0061__CAM_FRONT__1533000000862624.jpg":
        "a418dc91b8dcbb81d6b0ab767622b5ac93d95f10ae6c684399e93eba05bc7adc",
    "samples/LIDAR_TOP/"
    "n000-synthetic-0-scene-0103__LIDAR_TOP__1533003601027086.pcd.bin":
        "b8caf03b37b38f7f575fd414a6df890c6f4e44182d7e107d497defdac73a909e",
    "samples/RADAR_FRONT/"
    "n000-synthetic-0-scene-0103__RADAR_FRONT__1533003601524814.pcd":
        "322e370233594b6814f5785abb8624333eb24d55baa94f2ddb5c8e0e94d07c67",
    "sweeps/RADAR_BACK_LEFT/"
    "n000-synthetic-0-scene-0061__RADAR_BACK_LEFT__1533000000468534.pcd":
        "6d7d0a7090c03e4f69b36bde7fa47e569f637cdd1a44267076d345abe3a8a9c7",
    "synthetic_labels/masks/"
    "0275b76f71af8ca359f2d4500a372bb2.png":
        "120ca7b030637052623ba587084e64f84d57b09d5c77026d39bcec5b8554f3de",
}


def test_tiny_preset_bytes_are_unchanged(tmp_path):
    root = Path(generate(tmp_path / "synthetic", preset="tiny", seed=0, version="v1.0-mini"))
    got = {rel: hashlib.sha256((root / rel).read_bytes()).hexdigest() for rel in EXPECTED_SHA256}
    assert got == EXPECTED_SHA256
