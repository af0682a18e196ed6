"""ROS adapter tests need the (pip) ROS 2 stack. They skip, with the reason, only where rclpy
cannot be imported; `make test` sets SIMPLEBEV_REQUIRE_ROS=1, which turns a missing stack into
an error instead, so CI cannot silently skip them."""
import os

import pytest

try:
    import rclpy  # noqa: F401
    ROS_IMPORT_ERROR = None
except ImportError as e:  # pragma: no cover - depends on the environment
    ROS_IMPORT_ERROR = e


def pytest_collection_modifyitems(config, items):
    if ROS_IMPORT_ERROR is None:
        return
    if os.environ.get("SIMPLEBEV_REQUIRE_ROS") == "1":
        raise pytest.UsageError(f"SIMPLEBEV_REQUIRE_ROS=1 but rclpy cannot be imported: "
                                f"{ROS_IMPORT_ERROR} (run `make setup`)")
    skip = pytest.mark.skip(reason=f"rclpy not importable ({ROS_IMPORT_ERROR}); see README")
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_bag(synthetic_dataroot, tmp_path_factory):
    """An MCAP bag of the tiny synthetic world's scene-0061 (3 keyframes) as the converter
    writes it for the tests' tiny model (node_harness.TINY): cameras, CameraInfo, radar, TF."""
    pytest.importorskip("nuscenes", reason="the test rig is the synthetic world")
    from simplebev_core.config import load_config
    from training.nuscenes_to_bag import convert

    from .node_harness import TINY

    dataroot, version = synthetic_dataroot
    return convert(dataroot, version, ["scene-0061"], tmp_path_factory.mktemp("bag") / "tiny",
                   "mcap", load_config(overrides=TINY), progress=False)
