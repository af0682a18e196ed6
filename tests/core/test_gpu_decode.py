"""input.decode: `cuda` decodes JPEGs at full size with torchvision's decoder (nvJPEG on a GPU),
`cpu` with OpenCV at DCT-reduced size. Here the CPU side: torchvision's decoder on the CPU (what
training's loader uses for `cuda`, and nvJPEG's twin) against the OpenCV path: how far apart the
network inputs are, and that the shipped model's grid hardly changes. The CUDA side runs in
bench/gpu_check.py on a GPU machine."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from simplebev_core.checkpoint import checkpoint_config
from simplebev_core.config import SimpleBevConfig
from simplebev_core.device import DeviceError
from simplebev_core.frame import AssemblyPlan, CameraInput, RawFrame, assemble, decode_frame
from simplebev_core.geometry import intrinsics_matrix
from simplebev_core.image_decode import (ImageDecodeError, check_decoder, decode_image,
                                         decode_images_full)
from simplebev_core.preprocess import _bicubic_uint8, _bicubic_uint8_in_float

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = Path(__file__).resolve().parents[2] / "models" / "synthetic_cpu" / "model.pt"
# Measured on the synthetic world's 1600x900 JPEGs at the shipped model's 112x200 input
# (models/synthetic_cpu; python -m bench.decoders --dataroot W): network inputs max 5.6-6.9
# levels apart, mean 0.25-0.34; its occupancy probabilities per cell at most 0.026-0.050 apart
# (mean 0.0005), 0-2 of 2500 cells on the other side of 0.5, over six held-out wide-world
# samples.
MAX_LEVELS, MEAN_LEVELS = 8.0, 0.6
MAX_PROB_CHANGE = 0.08


def with_decode(cfg: SimpleBevConfig, decode: str) -> SimpleBevConfig:
    return dataclasses.replace(cfg, input=dataclasses.replace(cfg.input, decode=decode))


def scene_image(h: int = 90, w: int = 160, seed: int = 0) -> np.ndarray:
    """BGR uint8 with smooth shading, edges and colour (so channel order matters)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 60)], -1).astype(np.uint8)
    img[h // 3:h // 2, w // 4:w // 2] = (20, 200, 240)
    return np.clip(img + rng.integers(0, 8, img.shape), 0, 255).astype(np.uint8)


def jpeg(bgr: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def test_full_decode_gives_rgb_at_full_size_close_to_opencv():
    bgr = scene_image()
    full = decode_images_full([jpeg(bgr)], [(90, 160)], "cpu")[0]
    opencv = decode_image(jpeg(bgr), (90, 160), (90, 160))
    assert full.shape == (3, 90, 160) and full.dtype == torch.uint8
    assert (full.int() - opencv.int()).abs().max() <= 2  # two libjpeg builds, same file
    assert (full.int() - torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1)).abs(
    ).float().mean() < 3  # RGB, not BGR


def test_full_decode_channel_orders_pngs_and_batches_like_one_by_one():
    a, b = scene_image(seed=1), scene_image(seed=2)
    png = cv2.imencode(".png", b)[1].tobytes()
    out = decode_images_full([jpeg(a), png, jpeg(a)], [(90, 160)] * 3, "cpu",
                             channel_orders=["bgr", "bgr", "rgb"])
    assert torch.equal(out[1], torch.from_numpy(b[:, :, ::-1].copy()).permute(2, 0, 1))
    assert torch.equal(out[2], out[0].flip(0))  # "rgb": the encoder was handed swapped channels
    assert torch.equal(out[0], decode_images_full([jpeg(a)], [(90, 160)], "cpu")[0])


def test_full_decode_errors_name_the_image():
    good, data = jpeg(scene_image()), bytearray(jpeg(scene_image(seed=3)))
    data[400:900] = b"\x00" * 500  # corrupt entropy-coded data: the batch call fails
    truncated = good[: len(good) // 2]
    with pytest.raises(ImageDecodeError, match="cam_b"):
        decode_images_full([good, truncated], [(90, 160)] * 2, "cpu", ["cam_a", "cam_b"])
    with pytest.raises(ImageDecodeError, match="cam_a.*expected 80x90"):
        decode_images_full([good], [(90, 80)], "cpu", ["cam_a"])
    try:  # libjpeg-turbo may decode zeroed data without an error; then it must not be cam_a
        decode_images_full([good, bytes(data)], [(90, 160)] * 2, "cpu", ["cam_a", "cam_b"])
    except ImageDecodeError as e:
        assert "cam_b" in str(e) and "cam_a" not in str(e)


def test_cuda_decode_refused_at_start_up_without_a_cuda_device():
    with pytest.raises(DeviceError, match="node.device is cpu"):
        check_decoder(torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="set input.decode to cpu"):
            check_decoder(torch.device("cuda"))


def test_frame_processor_checks_the_decoder_at_start_up():
    from simplebev_core import build_model, load_config
    from simplebev_core.inference import RunnerBuilder
    from simplebev_core.processing import FrameProcessor

    cfg = load_config(overrides={"model.encoder": "effb0", "model.encoder_pretrained": False,
                                 "input.decode": "cuda", "input.image_height": 64,
                                 "input.image_width": 96, "grid.voxels_zyx": [16, 4, 16]})
    runners = RunnerBuilder(build_model(cfg), cfg, torch.device("cpu"))
    with pytest.raises(DeviceError, match="input.decode 'cuda'"):
        FrameProcessor(cfg, runners)


def test_missing_camera_and_decode_frame_under_full_decode():
    cfg = with_decode(checkpoint_config(MODEL), "cuda")
    cams = [CameraInput(jpeg(scene_image(seed=s)), (90, 160), intrinsics_matrix(80, 80, 80, 45),
                        torch.eye(4)) for s in range(len(cfg.input.cameras))]
    cams[2] = dataclasses.replace(cams[2], image=None)
    frame = RawFrame(tuple(cfg.input.cameras), cams)
    plan = AssemblyPlan.plain(cfg)
    assert plan.decode_device == "cpu"
    decoded = decode_frame(frame, plan)
    assert decoded.cameras[0].image.shape == (3, 90, 160) and decoded.cameras[2].image is None
    assert torch.equal(assemble(decoded, cfg).images, assemble(frame, cfg).images)
    assert assemble(frame, cfg).images[2].abs().max() == 0


def test_bicubic_in_float_is_within_one_level_of_the_uint8_kernel():
    """data.compat upstream on a GPU: CUDA has no uint8 antialiased bicubic, so it resizes in
    float and rounds; against torch's CPU uint8 kernel (PIL's arithmetic)."""
    u8 = torch.from_numpy(scene_image(450, 800).transpose(2, 0, 1).copy())[None]
    a, b = _bicubic_uint8(u8, (224, 400)), _bicubic_uint8_in_float(u8, (224, 400))
    diff = (a.int() - b.int()).abs()
    assert diff.max() <= 1 and diff.float().mean() < 0.2


def test_training_loader_and_model_under_both_decoders(synthetic_dataroot):
    """The loader honours input.decode (cuda: full-size decode on the CPU); the network inputs
    differ by a few levels; the shipped model's occupancy hardly changes."""
    from simplebev_core.inference import load_inference_model
    from training.nuscenes_data import NuScenesBev

    dataroot, version = synthetic_dataroot
    cfg = checkpoint_config(MODEL)
    loaded = load_inference_model(cfg, MODEL, torch.device("cpu"))
    probs, images = {}, {}
    for decode in ("cpu", "cuda"):
        data = NuScenesBev(with_decode(cfg, decode), dataroot, version, "val", train=False)
        sample = data[0]
        images[decode] = sample.images
        with torch.no_grad():
            out = loaded.model(sample.images[None], sample.pix_T_cams[None],
                               sample.ref_T_cams[None])
        probs[decode] = torch.sigmoid(out.segmentation[0, 0])
    levels = (images["cpu"] - images["cuda"]).abs() * 255
    assert 0 < levels.mean() < MEAN_LEVELS and levels.max() < MAX_LEVELS
    change = (probs["cpu"] - probs["cuda"]).abs()
    assert change.max() < MAX_PROB_CHANGE, change.max()
    occupied = [p > 0.5 for p in probs.values()]
    assert (occupied[0] != occupied[1]).sum() <= 0.01 * occupied[0].numel()
