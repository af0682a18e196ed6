"""FrameSource on a small hand-made rig (two cameras, two radars, ROS messages made by
training.bag_messages): the radar age limit, a radar that stops publishing (issue item 7: a
phantom without `map`, a set that fails on ExtrapolationException with it), and the input
gate's readiness (`inputs_ready`, issue item 2)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("rclpy", reason="the node's conversions use ROS 2 message types")
cv2 = pytest.importorskip("cv2", reason="the rig's tiny JPEG is encoded with OpenCV")

from simplebev_core.config import load_config  # noqa: E402
from simplebev_core.radar import NUSCENES_RADAR_FIELDS, RCS_CHANNEL  # noqa: E402
from simplebev_ros.frame_source import FrameSource  # noqa: E402
from simplebev_ros.sync import SyncedSet  # noqa: E402
from simplebev_ros.tf_buffer import ExtrapolationException, TfBuffer  # noqa: E402
from training import bag_messages as bm  # noqa: E402

SEC = 1_000_000_000
MS = 1_000_000
T0 = 1_000 * SEC  # the rig's clock starts here
RADAR_PERIOD_NS = round(SEC / 13)  # nuScenes' radars sweep at ~13 Hz
TF_PERIOD_NS = 50 * MS  # map -> base_link at 20 Hz

# test_frame_parity's small model, on a rig of two cameras and two radars.
OVERRIDES = {"grid.voxels_zyx": [100, 4, 100], "input.image_height": 112, "input.image_width": 200,
             "model.pixel_convention": "exact", "model.radar": "meta", "model.encoder": "effb0",
             "model.encoder_pretrained": False, "data.radar_sweeps": 3,
             "input.cameras": ["CAM_FRONT", "CAM_BACK"], "input.ref_camera": "CAM_FRONT",
             "node.radar_topics": ["/RADAR_FRONT", "/RADAR_BACK_LEFT"]}
CAMERAS = ("CAM_FRONT", "CAM_BACK")
# base_link -> sensor calibrations (translation, rotation wxyz); cameras are optical frames.
CALIBRATION = {
    "CAM_FRONT": ([1.70, 0.01, 1.51], [0.5, -0.5, 0.5, -0.5]),
    "CAM_BACK": ([0.03, 0.00, 1.57], [0.5, -0.5, -0.5, 0.5]),
    "RADAR_FRONT": ([3.41, 0.00, 0.50], [1.0, 0.0, 0.0, 0.0]),
    "RADAR_BACK_LEFT": ([-0.56, 0.63, 0.53], [0.0, 0.0, 0.0, 1.0]),
}
DEAD, ALIVE = ("/RADAR_FRONT", "RADAR_FRONT", 7.0), ("/RADAR_BACK_LEFT", "RADAR_BACK_LEFT", 3.0)
POINTS_PER_SWEEP = 4
IMAGE_W, IMAGE_H = 16, 8
K = [[20.0, 0.0, 8.0], [0.0, 20.0, 4.0], [0.0, 0.0, 1.0]]
JPEG = cv2.imencode(".jpg", np.full((IMAGE_H, IMAGE_W, 3), 128, np.uint8))[1].tobytes()


def make_cfg(**overrides):
    return load_config(overrides={**OVERRIDES, **overrides})


def static_tf():
    return bm.tf_message([bm.transform(bm.BASE_FRAME, name, 0, t, q)
                          for name, (t, q) in CALIBRATION.items()])


def ego_tf(stamp_ns):
    """map -> base_link at stamp_ns: the car drives at ~10 m/s and turns at 0.2 rad/s."""
    t = (stamp_ns - T0) * 1e-9
    yaw = 0.2 * t
    return bm.tf_message([bm.transform(bm.MAP_FRAME, bm.BASE_FRAME, stamp_ns,
                                       [10.0 * t, 1.5 * t, 0.0],
                                       [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])])


def tf_grid(start_ns, end_ns):
    """Stamps of the 20 Hz map -> base_link stream from start_ns to end_ns inclusive."""
    return list(range(start_ns, end_ns + 1, TF_PERIOD_NS))


def source_with_infos(cfg, tf):
    source = FrameSource(cfg, tf)
    for slot, name in enumerate(CAMERAS):
        source.set_camera_info(slot, bm.camera_info(K, IMAGE_W, IMAGE_H, name, T0))
    return source


def camera_set(stamps_ns):
    """A complete set, CAM_FRONT (the reference camera) first."""
    return SyncedSet(stamps_ns[0], [bm.compressed_image(JPEG, name, s)
                                    for name, s in zip(CAMERAS, stamps_ns)], list(stamps_ns))


def feed_radar(source, radar, stamps_ns):
    topic, frame_id, rcs = radar
    cloud = np.zeros(POINTS_PER_SWEEP, [(f, "<f4") for f in NUSCENES_RADAR_FIELDS])
    cloud["x"] = np.arange(5.0, 5.0 + POINTS_PER_SWEEP)
    cloud["z"] = 0.5
    cloud["rcs"] = rcs  # tells the radars' points apart in the frame
    for stamp_ns in stamps_ns:
        source.add_radar(topic, bm.point_cloud(cloud, frame_id, stamp_ns))


def radar_stamps(start_ns, end_ns):
    """13 Hz sweep stamps ending exactly at end_ns, none before start_ns."""
    return list(range(end_ns, start_ns - 1, -RADAR_PERIOD_NS))[::-1]


def points_of(frame, radar):
    """How many of the frame's radar points came from `radar` (its rcs marker)."""
    return int((frame.radar.meta_ego[:, RCS_CHANNEL] == radar[2]).sum())


def test_default_radar_max_age_is_the_training_window_plus_one_period():
    """node.radar_max_age_s 0 derives the age limit from data.radar_sweeps: training never saw
    a sweep older than radar_sweeps nuScenes periods (13 Hz), plus one period of slack; a
    positive value is used as configured. A wrong derivation would either keep phantom sweeps
    or drop sweeps training used."""
    tf = TfBuffer(10.0)
    derived = FrameSource(make_cfg(**{"node.radar_max_age_s": 0.0}), tf)
    assert derived.radar_max_age_ns == round(4 / 13 * SEC) == 307_692_308
    five = FrameSource(make_cfg(**{"data.radar_sweeps": 5, "node.radar_max_age_s": 0.0}), tf)
    assert five.radar_max_age_ns == round(6 / 13 * SEC)
    configured = FrameSource(make_cfg(**{"node.radar_max_age_s": 0.5}), tf)
    assert configured.radar_max_age_ns == 500_000_000


def test_dead_radar_without_map_feeds_no_phantom():
    """Issue item 7, no `map` frame: a radar that stops publishing must not keep feeding its
    last sweeps. Its frame is static under base_link, so without the age limit the old sweeps
    would transform fine and sit ahead of the car for ever (a phantom). Just after it stops its
    recent sweeps are still used; 2 s later none are, while the live radar's are."""
    cfg = make_cfg()
    tf = TfBuffer(10.0)
    tf.add_message(static_tf(), static=True)
    source = source_with_infos(cfg, tf)
    t_dead = T0 + 1 * SEC  # the dead radar's last sweep
    feed_radar(source, DEAD, radar_stamps(T0, t_dead))

    t_fresh = t_dead + 100 * MS
    feed_radar(source, ALIVE, radar_stamps(T0 + 30 * MS, t_fresh))
    fresh = source.build(camera_set([t_fresh, t_fresh + 20 * MS]))
    assert points_of(fresh, DEAD) == 3 * POINTS_PER_SWEEP  # its newest data.radar_sweeps
    assert points_of(fresh, ALIVE) == 3 * POINTS_PER_SWEEP

    t_late = t_dead + 2 * SEC
    feed_radar(source, ALIVE, radar_stamps(t_fresh + RADAR_PERIOD_NS, t_late))
    late = source.build(camera_set([t_late, t_late + 20 * MS]))
    assert points_of(late, DEAD) == 0, "the silent radar's old sweeps are still fed (phantom)"
    assert points_of(late, ALIVE) == 3 * POINTS_PER_SWEEP
    assert len(late.radar.xyz_ego) == 3 * POINTS_PER_SWEEP
    assert source.counts["uncompensated"] == 2


def test_dead_radar_with_map_is_skipped_and_does_not_stop_the_set():
    """Issue item 7, with `map`: the dead radar's last sweeps need map -> base_link at their
    stamps, which leave the TF cache (1 s here) while the car drives on. Such a sweep must be
    left out and counted, not raise ExtrapolationException for the whole set (one dead radar
    stopped the node). The age limit is set to 10 s so that it cannot hide the problem: the
    sweeps are still selected, and their lookups fail."""
    cfg = make_cfg(**{"node.radar_max_age_s": 10.0})
    tf = TfBuffer(cache_s=1.0)
    tf.add_message(static_tf(), static=True)
    source = source_with_infos(cfg, tf)
    t_dead = T0 + 1 * SEC
    feed_radar(source, DEAD, radar_stamps(T0, t_dead))

    # Just after the radar stopped its sweeps' transforms are in the cache: all used.
    t_fresh = t_dead + 100 * MS
    for stamp_ns in tf_grid(T0, t_fresh + 100 * MS):
        tf.add_message(ego_tf(stamp_ns), static=False)
    feed_radar(source, ALIVE, radar_stamps(T0 + 30 * MS, t_fresh))
    fresh = source.build(camera_set([t_fresh, t_fresh + 20 * MS]))
    assert points_of(fresh, DEAD) == 3 * POINTS_PER_SWEEP
    assert source.counts["radar_sweeps_skipped"] == 0

    # 3 s later the car's transforms go on, the dead radar's stamps are out of the cache.
    t_late = t_dead + 3 * SEC
    for stamp_ns in tf_grid(t_fresh + 150 * MS, t_late + 100 * MS):
        tf.add_message(ego_tf(stamp_ns), static=False)
    feed_radar(source, ALIVE, radar_stamps(t_fresh + RADAR_PERIOD_NS, t_late))
    selected = source.radar[DEAD[0]].sweeps_before(t_late, 3, source.radar_max_age_ns)
    assert len(selected) == 3, "the age limit must not be what keeps the dead sweeps out here"
    with pytest.raises(ExtrapolationException):
        tf.lookup(bm.MAP_FRAME, bm.BASE_FRAME, selected[0][0])
    late = source.build(camera_set([t_late, t_late + 20 * MS]))
    assert source.counts["radar_sweeps_skipped"] == 3
    assert points_of(late, DEAD) == 0
    assert points_of(late, ALIVE) == 3 * POINTS_PER_SWEEP
    assert source.counts["uncompensated"] == 0 and source.motion_compensated


def test_inputs_ready_waits_for_camera_info_and_transforms_that_interpolate():
    """The input gate's test (issue item 2): a set is ready only when every CameraInfo is in
    and map -> base_link covers every camera's stamp, not only the set's (reference) stamp.
    Built then with no tolerance, its extrinsics are bit-identical to those from a buffer that
    had all transforms from the start, whatever order TF and images came in. Before that the
    exact build raises, and a build with tolerance gives different extrinsics (why the node
    waits)."""
    cfg = make_cfg()
    t_front, t_back = T0 + 1010 * MS, T0 + 1060 * MS
    synced = camera_set([t_front, t_back])
    stream = tf_grid(T0, T0 + 1000 * MS) + [T0 + 1050 * MS, t_back] + tf_grid(
        T0 + 1100 * MS, T0 + 1300 * MS)

    full = TfBuffer(10.0)
    full.add_message(static_tf(), static=True)
    for stamp_ns in stream:
        full.add_message(ego_tf(stamp_ns), static=False)
    reference = FrameSource(cfg, full)
    assert not reference.inputs_ready(synced)  # no CameraInfo yet
    reference.set_camera_info(0, bm.camera_info(K, IMAGE_W, IMAGE_H, CAMERAS[0], T0))
    assert not reference.inputs_ready(synced)  # CAM_BACK's is missing
    reference.set_camera_info(1, bm.camera_info(K, IMAGE_W, IMAGE_H, CAMERAS[1], T0))
    assert reference.inputs_ready(synced)
    expected = reference.build(synced, 0)

    tf = TfBuffer(10.0)
    tf.add_message(static_tf(), static=True)
    for stamp_ns in tf_grid(T0, T0 + 1000 * MS):
        tf.add_message(ego_tf(stamp_ns), static=False)
    source = source_with_infos(cfg, tf)
    assert not source.inputs_ready(synced)  # both cameras are newer than the newest transform
    with pytest.raises(ExtrapolationException):
        source.build(synced, 0)
    tf.add_message(ego_tf(T0 + 1050 * MS), static=False)
    assert not source.inputs_ready(synced)  # CAM_FRONT's stamp is covered, CAM_BACK's is not
    early = source.build(synced, 20 * MS)  # what the tolerance would give (nearest transform)
    tf.add_message(ego_tf(t_back), static=False)  # a transform at the newest camera stamp
    assert source.inputs_ready(synced)
    got = source.build(synced, 0)

    for slot, name in enumerate(CAMERAS):
        a, b = got.cameras[slot].ego_T_cam, expected.cameras[slot].ego_T_cam
        assert a.dtype == b.dtype == torch.float64
        assert torch.equal(a, b), f"{name}: max |diff| {float((a - b).abs().max())}"
    static_back = tf.lookup(bm.BASE_FRAME, CAMERAS[1], 0)
    assert not torch.equal(got.cameras[1].ego_T_cam, static_back)  # motion compensated
    assert not torch.equal(early.cameras[1].ego_T_cam, got.cameras[1].ego_T_cam)
    assert source.counts["uncompensated"] == 0


def test_without_map_frame_static_transforms_are_ready_and_uncompensated():
    """A vehicle without localisation has no `map` frame: with only static transforms a set
    is ready at any stamp (waiting for map -> base_link would hold every set for ever), builds
    with the static calibration as extrinsics, and is counted 'uncompensated'. Once a `map`
    frame exists, sets need it again."""
    cfg = make_cfg()
    tf = TfBuffer(10.0)
    tf.add_message(static_tf(), static=True)
    source = FrameSource(cfg, tf)
    synced = camera_set([T0 + 5 * SEC, T0 + 5 * SEC + 30 * MS])
    assert not source.inputs_ready(synced)  # no CameraInfo yet
    source = source_with_infos(cfg, tf)
    assert source.inputs_ready(synced)
    frame = source.build(synced, 0)
    assert source.counts["uncompensated"] == 1 and not source.motion_compensated
    for slot, name in enumerate(CAMERAS):
        assert torch.equal(frame.cameras[slot].ego_T_cam, tf.lookup(bm.BASE_FRAME, name, 0))

    tf.add_message(ego_tf(T0), static=False)  # localisation starts, older than the set
    assert not source.inputs_ready(synced)
