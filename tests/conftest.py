"""Process-wide test environment, set before anything can call rclpy.init() (here or in a
child process, which inherits it): DDS discovery on loopback only, a private random domain so
concurrent runs on one host do not see each other, the large shared-memory FastDDS profile
(camera images exceed the default segment), and the venv prefix on AMENT_PREFIX_PATH so the
ament index finds the package built into it."""
import os
import random
import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 101)))
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(_REPO / "test_support" / "fastdds_test.xml"))
os.environ["AMENT_PREFIX_PATH"] = os.pathsep.join(
    p for p in (sys.prefix, os.environ.get("AMENT_PREFIX_PATH", "")) if p)
