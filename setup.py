"""simplebev: Simple-BEV perception as a ROS 2 node and a PyTorch training package."""
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

# The one default config (params-file form) lives at the repository root, where the node,
# training, docs and tests name it; installs carry a copy next to simplebev_core/config.py,
# which finds it there (simplebev_core.config.default_config_path).
DEFAULT_CONFIG = "config/simplebev.yaml"
INSTALLED_CONFIG = "simplebev_core/simplebev.yaml"


class BuildPyWithConfig(build_py):
    """build_py that also copies config/simplebev.yaml into the built simplebev_core."""

    def _config_copy(self):
        """Where the copy goes; None for an editable install, which runs from the source tree
        and reads the file in place."""
        if getattr(self, "editable_mode", False):
            return None
        return Path(self.build_lib) / INSTALLED_CONFIG

    def run(self):
        super().run()
        target = self._config_copy()
        if target is not None:
            self.mkpath(str(target.parent))
            self.copy_file(DEFAULT_CONFIG, str(target))

    def get_outputs(self, include_bytecode=True):
        target = self._config_copy()
        extra = [] if target is None else [str(target)]
        return [*super().get_outputs(include_bytecode), *extra]


class SdistWithConfig(sdist):
    """sdist that carries config/simplebev.yaml, so a wheel built from it has the config."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        target = Path(base_dir) / DEFAULT_CONFIG
        self.mkpath(str(target.parent))
        self.copy_file(DEFAULT_CONFIG, str(target))


setup(
    name="simplebev",
    version="0.1.0",
    description="Simple-BEV (Harley et al., ICRA 2023) re-implemented: core model, training, "
                "ROS 2 node",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["simplebev_core", "simplebev_core.*", "simplebev_ros",
                                    "simplebev_ros.*", "training", "training.*"]),
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "numpy>=1.23",
        "PyYAML>=6",
        # JPEG/PNG decoding shared by the loader and the node (simplebev_core.image_decode).
        "opencv-python-headless>=4.5",
    ],
    extras_require={
        # Everything under training/: nuScenes devkit, image I/O, logging.
        "training": [
            "nuscenes-devkit>=1.1.10",
            "opencv-python-headless>=4.5",
            "matplotlib>=3.5",
            "pyquaternion>=0.9",
            "pillow>=9",
            "tensorboard>=2.10",
            "tqdm>=4.60",
        ],
        # Deployment (simplebev_core.export / .backends): ONNX export, CPU runtimes.
        # TensorRT is not listed: it comes with the CUDA stack of the target machine.
        "deploy": [
            "onnx>=1.15",
            "onnxruntime>=1.17",
            "openvino>=2024.0",
        ],
    },
    cmdclass={"build_py": BuildPyWithConfig, "sdist": SdistWithConfig},
    # simplebev_ros needs ROS 2 (rclpy and message packages), which pip cannot install
    # portably: a ROS 2 install provides it, or `make setup` (requirements-ros.txt) here.
    entry_points={"console_scripts": [
        "simplebev-node = simplebev_ros.node:main",
        "simplebev-train = training.train:main",
        "simplebev-eval = training.eval:main",
        "simplebev-compare = training.compare:main",
    ]},
)
