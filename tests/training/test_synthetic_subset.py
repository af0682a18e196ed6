"""`--only-scenes`: a scene generated alone is exactly the scene of the full dataset (tables
and JPEG bytes), so the demo can render just the held-out scenes."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("nuscenes", reason="the synthetic world is written for the nuScenes devkit")

from training.synthetic import generate  # noqa: E402


def test_a_scene_generated_alone_equals_its_full_dataset_version(synthetic_dataroot, tmp_path):
    full, version = synthetic_dataroot
    alone = generate(tmp_path / "alone", preset="tiny", seed=0, version=version,
                     only_scenes=("scene-0103",))
    for table in sorted((alone / version).glob("*.json")):
        rows = {json.dumps(r, sort_keys=True) for r in json.loads(table.read_text())}
        full_rows = {json.dumps(r, sort_keys=True)
                     for r in json.loads((full / version / table.name).read_text())}
        assert rows <= full_rows, table.name
    scenes = json.loads((alone / version / "scene.json").read_text())
    assert [s["name"] for s in scenes] == ["scene-0103"]
    images = sorted((alone / "samples" / "CAM_FRONT").glob("*.jpg"))
    assert images and all((full / "samples" / "CAM_FRONT" / p.name).read_bytes() == p.read_bytes()
                          for p in images)
    with pytest.raises(ValueError, match="scene-9999"):
        generate(tmp_path / "bad", preset="tiny", seed=0, version=version,
                 only_scenes=("scene-9999",))
