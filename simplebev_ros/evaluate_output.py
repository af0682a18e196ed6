"""What simplebev_ros.evaluate writes: the pictures (a PNG mosaic of the frame with the most
ground-truth vehicle cells, an animated GIF of the sequence: simplebev_ros.mosaic) and the
report as JSON."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from simplebev_core import ground_truth
from simplebev_core.config import SimpleBevConfig

from .mosaic import frame_mosaic
from .replay import Recorded

if TYPE_CHECKING:
    from .evaluate import Frame, Report


def write_outputs(report: Report, messages: Sequence[Recorded], cfg: SimpleBevConfig,
                  out: Path) -> list[Path]:
    """out/demo.png (the frame with the most ground-truth vehicle cells), out/demo.gif (all
    frames), out/report.json."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    best = max(report.frames, key=lambda f: int((f.gt == ground_truth.VEHICLE).sum()))
    png, gif, js = out / "demo.png", out / "demo.gif", out / "report.json"

    def picture(f: Frame, width: int) -> Image.Image:
        return Image.fromarray(frame_mosaic(messages, f.stamp_ns, f.pred, f.gt,
                                            cfg.input.cameras, cfg.node.camera_image_topic,
                                            width))

    picture(best, 1200).save(png)
    pictures = [picture(f, 720) for f in report.frames]
    pictures[0].save(gif, save_all=True, append_images=pictures[1:], duration=500, loop=0)
    js.write_text(json.dumps({
        "iou": report.iou, "iou_unfiltered": report.iou_unfiltered,
        "iou_by_band": dict(zip(report.band_labels, report.iou_by_band)),
        "latency_ms": report.latency_ms, "throughput_hz": report.throughput_hz,
        "frames": len(report.frames), "missing": report.missing,
        "node": report.diagnostics}, indent=2))
    return [png, gif, js]
