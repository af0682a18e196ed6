"""Scene naming: synthetic scenes borrow real nuScenes scene names so that the devkit's own
`nuscenes.utils.splits.create_splits_scenes()` lists select them, unchanged.

v1.0-mini: scene i takes MINI_SCENE_ORDER[i]. The order interleaves a validation scene early
(index 1) so that any dataset with >= 2 scenes has both a mini_train and a mini_val scene.
v1.0-trainval: the same idea with the devkit's `train` / `val` lists (one val scene every 5).
"""
from __future__ import annotations

from nuscenes.utils import splits as nusc_splits

# 8 mini_train + 2 mini_val names, val at positions 1 and 5.
MINI_SCENE_ORDER: tuple[str, ...] = (
    "scene-0061", "scene-0103", "scene-0553", "scene-0655", "scene-0757",
    "scene-0916", "scene-0796", "scene-1077", "scene-1094", "scene-1100",
)
SUPPORTED_VERSIONS = ("v1.0-mini", "v1.0-trainval")


def scene_names(version: str, count: int) -> list[str]:
    """Real nuScenes scene names for `count` synthetic scenes of `version`."""
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"version must be one of {SUPPORTED_VERSIONS}, got {version!r}")
    if count < 1:
        raise ValueError(f"need at least 1 scene, got {count}")
    if version == "v1.0-mini":
        if count > len(MINI_SCENE_ORDER):
            raise ValueError(f"v1.0-mini has only {len(MINI_SCENE_ORDER)} scene names; "
                             f"use --version v1.0-trainval for {count} scenes")
        return list(MINI_SCENE_ORDER[:count])
    train, val = list(nusc_splits.train), list(nusc_splits.val)
    names: list[str] = []
    while len(names) < count:
        # Every 5th scene (starting with the 2nd) is a val scene: 20 % val, >= 1 val when
        # count >= 2.
        source = val if len(names) % 5 == 1 else train
        if not source:
            raise ValueError(f"too many scenes requested: {count}")
        names.append(source.pop(0))
    return names
