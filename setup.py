"""simplebev: Simple-BEV perception as a ROS 2 node and a PyTorch training package."""
from setuptools import find_packages, setup

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
    # simplebev_ros needs ROS 2 (rclpy and message packages), which pip cannot install
    # portably: a ROS 2 install provides it, or `make setup` (requirements-ros.txt) here.
    entry_points={"console_scripts": [
        "simplebev-node = simplebev_ros.node:main",
        "simplebev-train = training.train:main",
        "simplebev-eval = training.eval:main",
    ]},
)
