"""The loader's record cache is bounded by bytes, evicts least recently used records first, and
keeps its byte count exact; the loader stays within the bound it was given."""
from __future__ import annotations

import pytest

from training.nuscenes_records import ByteBoundedLru


class Blob:
    def __init__(self, size: int):
        self.size = size

    def nbytes(self) -> int:
        return self.size


def test_evicts_least_recently_used_until_within_the_byte_bound():
    cache = ByteBoundedLru(100)
    cache.put("a", Blob(40))
    cache.put("b", Blob(40))
    assert cache.get("a") is not None  # "a" is now the most recently used
    cache.put("c", Blob(40))  # 120 bytes > 100: "b" goes
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert cache.nbytes == 80 and len(cache) == 2
    cache.put("a", Blob(10))  # replacing a key re-counts its bytes
    assert cache.nbytes == 50
    cache.put("huge", Blob(500))  # larger than the bound: nothing can stay
    assert len(cache) == 0 and cache.nbytes == 0


def test_loader_record_cache_stays_within_its_bound(synthetic_dataroot):
    pytest.importorskip("nuscenes", reason="the loader is built on the nuScenes devkit")
    from simplebev_core.config import load_config
    from training.nuscenes_data import NuScenesBev

    dataroot, version = synthetic_dataroot
    cfg = load_config(overrides={"model.radar": "meta", "input.image_height": 64,
                                 "input.image_width": 112, "grid.voxels_zyx": [50, 2, 50]})
    unbounded = NuScenesBev(cfg, dataroot, version, "train", train=False)
    for i in range(len(unbounded)):
        unbounded[i]
    sizes = [record.nbytes() for record in unbounded.records._data.values()]
    assert len(sizes) == len(unbounded) and min(sizes) > 0
    bound = max(sizes) + min(sizes) // 2  # room for one record, not two
    bounded = NuScenesBev(cfg, dataroot, version, "train", train=False, cache_bytes=bound)
    for _ in range(2):
        for i in range(len(bounded)):
            bounded[i]
            assert bounded.records.nbytes <= bound
    assert len(bounded.records) == 1
    assert bounded.records.nbytes == sum(r.nbytes() for r in bounded.records._data.values())
