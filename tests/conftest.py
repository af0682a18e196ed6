"""Process-wide test environment, set before anything can call rclpy.init() (here or in a
child process, which inherits it): DDS discovery on loopback only, a private random domain so
concurrent runs on one host do not see each other, the large shared-memory FastDDS profile
(camera images exceed the default segment), and the venv prefix on AMENT_PREFIX_PATH so the
ament index finds the package built into it."""
import os
import random
import sys
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 101)))
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE",
                      str(_REPO / "test_support" / "fastdds_test.xml"))
os.environ["AMENT_PREFIX_PATH"] = os.pathsep.join(
    p for p in (sys.prefix, os.environ.get("AMENT_PREFIX_PATH", "")) if p)


@pytest.fixture(scope="session")
def synthetic_dataroot(tmp_path_factory) -> tuple[Path, str]:
    """(dataroot, version) of a tiny synthetic dataset in nuScenes format (2 scenes x 3 keyframes,
    scene-0061 in mini_train and scene-0103 in mini_val), with sidecar labels. Takes ~10 s."""
    pytest.importorskip("nuscenes",
                        reason="the synthetic dataset is written for the nuScenes devkit")
    from training.synthetic import generate

    version = "v1.0-mini"
    dataroot = generate(tmp_path_factory.mktemp("synthetic_nuscenes"), preset="tiny", seed=0,
                        version=version)
    return Path(dataroot), version


@pytest.fixture(scope="module")
def one_thread():
    """Tiny shapes gain nothing from a second thread, and on a CPU shared with other work
    torch's spinning threads make them many times slower: a module that uses this (pytestmark =
    pytest.mark.usefixtures("one_thread")) runs on one torch thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
