"""The node's processing path gives the same outputs with the torch backend and with ONNX
Runtime (the node's `node.backend`): a synthetic-world camera set through FrameSource and
BevPipeline twice, compared grid cell by grid cell and instance by instance."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("rclpy", reason="the pipeline converts ROS messages")
pytest.importorskip("onnxruntime", reason="the onnxruntime backend (the deploy extra, make setup)")
pytest.importorskip("nuscenes", reason="the rig is the synthetic world in nuScenes format")

from simplebev_core.config import load_config  # noqa: E402
from simplebev_core.inference import RunnerBuilder  # noqa: E402
from simplebev_core.model import build_model  # noqa: E402
from simplebev_ros.stamps import stamp_to_ns  # noqa: E402
from simplebev_ros.pipeline import BevPipeline  # noqa: E402
from simplebev_ros.sync import CameraSync  # noqa: E402
from training.nuscenes_data import NuScenesBev  # noqa: E402

from .node_harness import TINY  # noqa: E402
from .scene_messages import frame_source, scene_messages  # noqa: E402


def run_pipeline(cfg, model, dataroot, version, token) -> object:
    dataset = NuScenesBev(cfg, dataroot, version, "train", train=False)
    tf_static, tf_dynamic, infos, images, _ = scene_messages(dataset.nusc, dataroot, token)
    source, tf = frame_source(cfg, tf_static, tf_dynamic, infos)
    sync = CameraSync(cfg.input.cameras, 1, 0.06, 10, 0.25)
    sets = []
    for slot, cam in enumerate(cfg.input.cameras):
        sets += sync.add(slot, stamp_to_ns(images[cam].header.stamp), images[cam], 0)
    runners = RunnerBuilder(model, cfg, torch.device("cpu"))
    return BevPipeline(cfg, runners, source).process(sets[0])


def test_torch_and_onnxruntime_backends_give_the_same_grids(synthetic_dataroot, tmp_path):
    dataroot, version = synthetic_dataroot
    base = {**TINY, "input.camera_poses": "static", "node.export_cache_dir": str(tmp_path)}
    torch.manual_seed(0)
    model = build_model(load_config(overrides=base)).eval()
    token = NuScenesBev(load_config(overrides=base), dataroot, version, "train",
                        train=False).tokens[0]
    results = {kind: run_pipeline(load_config(overrides={**base, "node.backend": kind}), model,
                                  dataroot, version, token) for kind in ("torch", "onnxruntime")}
    a, b = results["torch"], results["onnxruntime"]
    assert a.grid == b.grid and a.stamp_ns == b.stamp_ns
    diff = np.abs(a.values.astype(int) - b.values.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # 0-100 rounding of ~1e-5 differences
    assert torch.allclose(a.output.segmentation, b.output.segmentation, rtol=1e-4, atol=1e-4)
    assert len(a.instances) == len(b.instances)
    assert list(tmp_path.glob("segnet-*.onnx")), "the export is cached on disk"
