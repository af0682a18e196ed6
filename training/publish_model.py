"""A training run's checkpoint -> a deployable model directory (weights and config, no
optimizer state), as shipped in models/synthetic_cpu/ for `make demo`.

    python -m training.publish_model --checkpoint runs/NAME --out models/NAME [--eval-csv FILE]

Writes OUT/model.pt (the project's checkpoint format with the run's config inside, written
atomically, loadable with weights_only=True), OUT/config.yaml (the run's config as a ROS 2
params file for the node) and, when given, OUT/eval.csv (the run's evaluation table).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Sequence

from simplebev_core.checkpoint import (CheckpointError, load_checkpoint, resolve_checkpoint,
                                       save_checkpoint)
from simplebev_core.config import write_params_file
from simplebev_core.inference import load_inference_model


def publish(checkpoint: str | Path, out: str | Path, eval_csv: str | Path | None = None) -> Path:
    import torch

    from simplebev_core.checkpoint import checkpoint_config

    path = resolve_checkpoint(checkpoint)
    cfg = checkpoint_config(path)
    if cfg is None:
        raise CheckpointError(f"checkpoint '{path}' carries no config (an upstream file?): "
                              f"publish the project's own checkpoints")
    loaded = load_inference_model(cfg, path, torch.device("cpu"))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "model.pt", loaded.model, cfg, step=loaded.step)
    load_checkpoint(out / "model.pt", loaded.model)  # read back: a file the node can load
    write_params_file(cfg, out / "config.yaml")
    if eval_csv is not None:
        shutil.copyfile(eval_csv, out / "eval.csv")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.publish_model",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint file or run directory (newest)")
    p.add_argument("--out", required=True)
    p.add_argument("--eval-csv", default=None)
    args = p.parse_args(argv)
    try:
        out = publish(args.checkpoint, args.out, args.eval_csv)
    except (CheckpointError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}/model.pt, config.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
