"""Generate scenes and write them as a nuScenes dataset: the 13 JSON tables, camera JPEGs, radar
`.pcd` (keyframes and sweeps), LIDAR_TOP `.pcd.bin` and one map mask per log.

Timing (integer microseconds, as nuScenes): keyframes at 2 Hz on the LIDAR_TOP sweep; cameras
fire a few ms after it (keyframes only); radars run at ~13 Hz (6 or 7 sweeps per keyframe
interval, alternating), their keyframe sweep synchronised with the lidar; 6 radar sweeps
precede the first keyframe so multi-sweep aggregation works from the first sample.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
from pyquaternion import Quaternion

from . import lidar, radar
from .config import SynthConfig
from .render import CameraModel, render_camera
from .rig import CAMERAS, IMAGE_H, IMAGE_W, LIDAR, RADARS, calibrate
from .splits import scene_names
from .tables import static_tables, token, visibility_token
from .world import CROSS_HALF, CURB_HALF, World, sample_world

TABLES = ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor",
          "ego_pose", "log", "scene", "sample", "sample_data", "sample_annotation", "map")
KEYFRAME_INTERVAL_US = 500_000
RADAR_SWEEPS_BEFORE_FIRST = 6
RADAR_PERIOD_US = 76_923  # 13 Hz
ANNOTATION_RANGE_M = 75.0  # covers the corners of a +-50 m BEV grid
MAP_RESOLUTION_M = 0.1  # the devkit's MapMask assumes 0.1 m per pixel
LABELS_DIR = "synthetic_labels"


def _pose_record(tok: str, timestamp_us: int, xy: np.ndarray, yaw: float) -> dict:
    q = Quaternion(axis=[0.0, 0.0, 1.0], angle=float(yaw))
    q = q if q.w >= 0 else -q
    return {"token": tok, "timestamp": int(timestamp_us), "rotation": [float(v) for v in q.q],
            "translation": [float(xy[0]), float(xy[1]), 0.0]}


def _matrix(record: dict) -> np.ndarray:
    """a_T_b from a nuScenes translation + rotation (w, x, y, z) record, read as the devkit
    does."""
    a_T_b = Quaternion(record["rotation"]).transformation_matrix
    a_T_b[:3, 3] = record["translation"]
    return a_T_b


class _SceneWriter:
    """Generates one scene: its world, sensor data files, and table records."""

    def __init__(self, cfg: SynthConfig, scene_index: int, name: str, out_dir: Path):
        self.cfg, self.index, self.name, self.out = cfg, scene_index, name, out_dir
        self.rng = np.random.default_rng([cfg.seed, scene_index])
        self.logfile = f"n000-synthetic-{cfg.seed}-{name}"
        self.tables: dict[str, list[dict]] = {t: [] for t in TABLES}
        self.labels: dict = {"masks": {}, "radar_points": {}, "instances": {}}
        self.t0_us = (1_533_000_000_000_000 + scene_index * 3_600_000_000
                      + int(self.rng.integers(0, 1_000_000)))
        n = cfg.samples_per_scene
        jitter = self.rng.integers(-5_000, 5_000, n)
        jitter[0] = 0
        self.key_us = self.t0_us + np.arange(n) * KEYFRAME_INTERVAL_US + jitter
        duration_s = (self.key_us[-1] - self.t0_us) * 1e-6
        self.world: World = sample_world(self.rng, cfg, duration_s)
        self.calib = calibrate(self.rng)
        self.cams = {c.channel: CameraModel(np.array(self.calib[c.channel].camera_intrinsic),
                                            cfg.render_scale)
                     for c in CAMERAS}
        self.rays = {ch: cam.rays_cam() for ch, cam in self.cams.items()}
        self.log_token = token("log", cfg.seed, name)
        self.cs_token = {s: token("calibrated_sensor", cfg.seed, name, s) for s in self.calib}

    # -- time and poses -------------------------------------------------------------------------
    def t_s(self, timestamp_us: int) -> float:
        return (int(timestamp_us) - self.t0_us) * 1e-6

    def ego_record(self, tok: str, timestamp_us: int) -> dict:
        xy, yaw, _ = self.world.ego.pose(np.array([self.t_s(timestamp_us)]))
        record = _pose_record(tok, timestamp_us, xy[0], yaw[0])
        self.tables["ego_pose"].append(record)
        return record

    def world_T_sensor(self, ego: dict, channel: str) -> np.ndarray:
        return _matrix(ego) @ self.calib[channel].ego_T_sensor()

    def sensor_velocity(self, timestamp_us: int, world_T_sensor: np.ndarray) -> np.ndarray:
        """Ground velocity (2,) of a point rigidly attached to the ego, here a sensor."""
        t = self.t_s(timestamp_us)
        xy, _, v = self.world.ego.pose(np.array([t]))
        omega = self.world.ego.speed * self.world.ego.direction * self.world.road.curvature
        lever = world_T_sensor[:2, 3] - xy[0]
        return v[0] + omega * np.array([-lever[1], lever[0]])

    # -- sample_data ----------------------------------------------------------------------------
    def sample_data(self, channel: str, timestamp_us: int, sample_token: str, key: bool, ext: str,
                    size: tuple[int, int] = (0, 0)) -> tuple[dict, dict, Path]:
        tok = token("sample_data", self.cfg.seed, self.name, channel, int(timestamp_us))
        folder = "samples" if key else "sweeps"
        rel = f"{folder}/{channel}/{self.logfile}__{channel}__{int(timestamp_us)}.{ext}"
        ego = self.ego_record(tok, timestamp_us)
        record = {"token": tok, "sample_token": sample_token, "ego_pose_token": tok,
                  "calibrated_sensor_token": self.cs_token[channel],
                  "timestamp": int(timestamp_us), "fileformat": ext.split(".")[0],
                  "is_key_frame": bool(key), "height": size[1], "width": size[0],
                  "filename": rel, "prev": "", "next": ""}
        self.tables["sample_data"].append(record)
        path = self.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return record, ego, path

    def radar_objects(self, t: float) -> radar.RadarObjects:
        xy, yaw, vel = self.world.agent_states(t)
        agents = self.world.agents
        wlh = np.array([a.size_wlh for a in agents]).reshape(-1, 3)
        sc = self.world.scenery
        solid = ~sc["decal"]
        cat_params = np.array([radar.RETURNS_RCS[a.category] for a in agents]).reshape(-1, 2)
        return radar.RadarObjects(
            center=np.concatenate([np.concatenate([xy, wlh[:, 2:] / 2], 1), sc["center"][solid]]),
            yaw=np.concatenate([yaw, sc["yaw"][solid]]),
            half=np.concatenate([wlh[:, [1, 0, 2]] / 2, sc["half"][solid]]),
            velocity=np.concatenate([vel, np.zeros((solid.sum(), 2))]),
            returns=np.concatenate([
                cat_params[:, 0],
                radar.SCENERY_RETURNS_PER_M * 2 * sc["half"][solid, :2].max(1)]),
            rcs=np.concatenate([cat_params[:, 1], np.full(solid.sum(), radar.SCENERY_RCS)]),
            agent=np.concatenate([np.arange(len(agents)), np.full(solid.sum(), -1)]))

    def radar_sweep(self, channel: str, timestamp_us: int, sample_token: str,
                    key: bool) -> tuple[np.ndarray, np.ndarray, str]:
        record, ego, path = self.sample_data(channel, timestamp_us, sample_token, key, "pcd")
        world_T_radar = self.world_T_sensor(ego, channel)
        points, owner = radar.sweep(self.radar_objects(self.t_s(timestamp_us)), world_T_radar,
                                    self.sensor_velocity(timestamp_us, world_T_radar), self.rng)
        radar.write_pcd(path, points)
        return points, owner, record["token"]

    # -- the scene ------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg, name = self.cfg, self.name
        sample_tokens = [token("sample", cfg.seed, name, k) for k in range(len(self.key_us))]
        radar_offsets = {r.channel: int(self.rng.integers(0, 3_000)) for r in RADARS}
        ann_by_agent: dict[int, list[dict]] = {}
        for k, t_key in enumerate(self.key_us):
            self.tables["sample"].append({"token": sample_tokens[k], "timestamp": int(t_key),
                                          "scene_token": token("scene", cfg.seed, name),
                                          "prev": sample_tokens[k - 1] if k else "",
                                          "next": (sample_tokens[k + 1]
                                                   if k + 1 < len(self.key_us) else "")})
            num_radar = self.keyframe_radar(k, t_key, sample_tokens[k], radar_offsets)
            num_lidar = self.keyframe_lidar(t_key, sample_tokens[k])
            visible, unoccluded = self.keyframe_cameras(t_key, sample_tokens[k])
            self.annotate(k, sample_tokens[k], t_key, visible, unoccluded, num_lidar, num_radar,
                          ann_by_agent)
        self.link_chains()
        self.finish_instances(ann_by_agent)
        self.scene_records(sample_tokens)
        return {"tables": self.tables, "labels": self.labels}

    def keyframe_radar(self, k: int, t_key: int, sample_token: str,
                       radar_offsets: dict[str, int]) -> np.ndarray:
        """Radar sweeps leading up to (and including) keyframe k; returns the per-agent count
        of keyframe returns passing the default filters."""
        n_agents = len(self.world.agents)
        n_between = RADAR_SWEEPS_BEFORE_FIRST if k == 0 else (7 if k % 2 else 6)
        previous = (t_key - RADAR_SWEEPS_BEFORE_FIRST * RADAR_PERIOD_US if k == 0
                    else self.key_us[k - 1])
        num_radar = np.zeros(n_agents, np.int64)
        for spec in RADARS:
            for j in range(1, n_between + 1):
                t_us = (int(previous + (t_key - previous) * j // n_between)
                        + radar_offsets[spec.channel])
                key = j == n_between
                points, owner, sd_token = self.radar_sweep(spec.channel, t_us, sample_token, key)
                if key:
                    valid = radar.passes_default_filters(points)
                    num_radar += np.bincount(owner[valid & (owner >= 0)], minlength=n_agents)
                    if self.cfg.write_labels:
                        self.labels["radar_points"][sd_token] = owner.tolist()
        return num_radar

    def keyframe_lidar(self, t_key: int, sample_token: str) -> np.ndarray:
        """The lidar keyframe; returns the per-agent point count."""
        record, ego, path = self.sample_data(LIDAR.channel, int(t_key), sample_token, True,
                                             "pcd.bin")
        points, owner = lidar.scan(self.world.boxes_at(self.t_s(t_key)),
                                   self.world_T_sensor(ego, LIDAR.channel), self.rng)
        lidar.write_bin(path, points)
        return np.bincount(owner[owner >= 0], minlength=len(self.world.agents))

    def keyframe_cameras(self, t_key: int, sample_token: str) -> tuple[np.ndarray, np.ndarray]:
        """The camera images of one keyframe; returns per-agent (visible, unoccluded) pixels."""
        cfg, n_agents = self.cfg, len(self.world.agents)
        visible = np.zeros(n_agents, np.int64)
        unoccluded = np.zeros(n_agents, np.int64)
        for spec in CAMERAS:
            t_us = int(t_key) + spec.time_offset_us
            record, ego, path = self.sample_data(spec.channel, t_us, sample_token, True,
                                                 "jpg", (IMAGE_W, IMAGE_H))
            out = render_camera(self.world, self.world.boxes_at(self.t_s(t_us)), n_agents,
                                self.world_T_sensor(ego, spec.channel),
                                self.cams[spec.channel], self.rays[spec.channel], self.rng)
            cv2.imwrite(str(path), out.image_bgr, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
            visible += out.visible_px
            unoccluded += out.unoccluded_px
            if cfg.write_labels:
                mask_rel = f"{LABELS_DIR}/masks/{record['token']}.png"
                (self.out / mask_rel).parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(self.out / mask_rel), (out.owner + 1).clip(0).astype(np.uint16))
                self.labels["masks"][record["token"]] = mask_rel
        return visible, unoccluded

    def annotate(self, k: int, sample_token: str, t_key: int, visible: np.ndarray,
                 unoccluded: np.ndarray, num_lidar: np.ndarray, num_radar: np.ndarray,
                 ann_by_agent: dict[int, list[dict]]) -> None:
        t = self.t_s(t_key)
        xy, yaw, _ = self.world.agent_states(t)
        ego_xy, _, _ = self.world.ego.pose(np.array([t]))
        in_range = np.linalg.norm(xy - ego_xy[0], axis=-1) < ANNOTATION_RANGE_M
        for a in np.nonzero(in_range)[0]:
            agent = self.world.agents[a]
            w, length, h = agent.size_wlh
            q = Quaternion(axis=[0.0, 0.0, 1.0], angle=float(yaw[a]))
            q = q if q.w >= 0 else -q
            fraction = visible[a] / unoccluded[a] if unoccluded[a] else 0.0
            record = {
                "token": token("sample_annotation", self.cfg.seed, self.name, k, int(a)),
                "sample_token": sample_token,
                "instance_token": token("instance", self.cfg.seed, self.name, int(a)),
                "visibility_token": visibility_token(fraction),
                "attribute_tokens": ([token("attribute", agent.attribute)] if agent.attribute
                                     else []),
                "translation": [float(xy[a, 0]), float(xy[a, 1]), h / 2], "size": [w, length, h],
                "rotation": [float(v) for v in q.q], "prev": "", "next": "",
                "num_lidar_pts": int(num_lidar[a]), "num_radar_pts": int(num_radar[a]),
            }
            self.tables["sample_annotation"].append(record)
            ann_by_agent.setdefault(int(a), []).append(record)

    def link_chains(self) -> None:
        """prev/next of every sensor's sample_data chain, in time order."""
        by_channel: dict[str, list[dict]] = {}
        for record in self.tables["sample_data"]:
            by_channel.setdefault(record["calibrated_sensor_token"], []).append(record)
        for chain in by_channel.values():
            chain.sort(key=lambda r: r["timestamp"])
            for before, after in zip(chain, chain[1:]):
                before["next"], after["prev"] = after["token"], before["token"]
        self.tables["sample_data"].sort(key=lambda r: (r["timestamp"], r["filename"]))

    def finish_instances(self, ann_by_agent: dict[int, list[dict]]) -> None:
        for a, anns in sorted(ann_by_agent.items()):
            for before, after in zip(anns, anns[1:]):
                before["next"], after["prev"] = after["token"], before["token"]
            agent = self.world.agents[a]
            inst = anns[0]["instance_token"]
            self.tables["instance"].append({"token": inst,
                                            "category_token": token("category", agent.category),
                                            "nbr_annotations": len(anns),
                                            "first_annotation_token": anns[0]["token"],
                                            "last_annotation_token": anns[-1]["token"]})
            if self.cfg.write_labels:
                self.labels["instances"][inst] = {"mask_value": a + 1,
                                                  "colour": [float(c) for c in agent.colour]}

    def scene_records(self, sample_tokens: list[str]) -> None:
        cfg, name = self.cfg, self.name
        map_token = token("map", cfg.seed, name)
        self.tables["scene"].append({"token": token("scene", cfg.seed, name),
                                     "log_token": self.log_token,
                                     "nbr_samples": len(sample_tokens),
                                     "first_sample_token": sample_tokens[0],
                                     "last_sample_token": sample_tokens[-1], "name": name,
                                     "description": f"synthetic scene (seed {cfg.seed}): "
                                                    f"{len(self.world.agents)} agents"})
        self.tables["log"].append({"token": self.log_token, "logfile": self.logfile,
                                   "vehicle": "synthetic-zoe", "date_captured": "2018-08-01",
                                   "location": "synthetic-city"})
        self.tables["map"].append({"token": map_token, "log_tokens": [self.log_token],
                                   "category": "semantic_prior",
                                   "filename": f"maps/{map_token}.png"})
        self.write_map(self.out / "maps" / f"{map_token}.png")
        for channel, c in self.calib.items():
            self.tables["calibrated_sensor"].append({
                "token": self.cs_token[channel], "sensor_token": token("sensor", channel),
                "translation": list(c.translation_ego), "rotation": list(c.quat_wxyz),
                "camera_intrinsic": ([list(row) for row in c.camera_intrinsic]
                                     if c.camera_intrinsic else [])})

    def write_map(self, path: Path) -> None:
        """Drivable-area mask at 0.1 m/px whose pixel (0, H) is the global origin, as MapMask
        expects."""
        road, cross = self.world.road, self.world.cross
        travel = self.world.ego.speed * self.t_s(self.key_us[-1])
        s = np.arange(-200.0, travel + 200.0, 2.0)
        left, _ = road.to_global(s, np.full_like(s, CURB_HALF))
        right, _ = road.to_global(s, np.full_like(s, -CURB_HALF))
        main = np.concatenate([left, right[::-1]])
        corners = [cross.origin_xy + a * 150.0 * cross.along + b * CROSS_HALF * cross.lateral
                   for a, b in ((-1, -1), (-1, 1), (1, 1), (1, -1))]
        extent = np.concatenate([main, corners]).max(0) + 20.0
        w, h = int(extent[0] / MAP_RESOLUTION_M), int(extent[1] / MAP_RESOLUTION_M)
        mask = np.zeros((h, w), np.uint8)
        for poly in (main, np.asarray(corners)):
            px = np.stack([poly[:, 0] / MAP_RESOLUTION_M, h - poly[:, 1] / MAP_RESOLUTION_M], -1)
            cv2.fillPoly(mask, [np.round(px).astype(np.int32)], 255)
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), mask)


def _run_scene(args: tuple[SynthConfig, int, str, str]) -> dict:
    cfg, index, name, out = args
    return _SceneWriter(cfg, index, name, Path(out)).run()


def write_dataset(cfg: SynthConfig, out_dir: Path) -> Path:
    """Generate all scenes of `cfg` into out_dir; returns out_dir (the nuScenes dataroot)."""
    cfg.validate()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = scene_names(cfg.version, cfg.scenes)
    jobs = [(cfg, i, name, str(out_dir)) for i, name in enumerate(names)
            if not cfg.only_scenes or name in cfg.only_scenes]
    names = [job[2] for job in jobs]
    workers = min(cfg.workers, len(jobs), os.cpu_count() or 1)
    if workers > 1:
        # spawn: no inherited thread pools / locks from the parent (fork is unsafe with them).
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            results = list(pool.map(_run_scene, jobs))
    else:
        results = [_run_scene(job) for job in jobs]

    tables = static_tables()
    for t in TABLES:
        tables.setdefault(t, [])
        for result in results:
            tables[t].extend(result["tables"][t])
    table_dir = out_dir / cfg.version
    table_dir.mkdir(parents=True, exist_ok=True)
    for t in TABLES:
        (table_dir / f"{t}.json").write_text(json.dumps(tables[t], indent=1))
    if cfg.write_labels:
        labels = {"render_scale": cfg.render_scale, "masks": {}, "radar_points": {},
                  "instances": {}}
        for result in results:
            for key in ("masks", "radar_points", "instances"):
                labels[key].update(result["labels"][key])
        (out_dir / LABELS_DIR).mkdir(exist_ok=True)
        (out_dir / LABELS_DIR / "labels.json").write_text(json.dumps(labels))
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
    (out_dir / "synthetic_info.json").write_text(json.dumps(
        {"generator": "training.synthetic", "settings": settings, "scenes": names}, indent=1))
    return out_dir
