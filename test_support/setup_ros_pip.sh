#!/usr/bin/env bash
# Build this package's messages, and where needed a test-only tf2_msgs, into a venv that holds
# the pip ROS 2 wheels (requirements-ros.txt; `make setup` installs them first). For machines
# without a ROS 2 install; on a real one use colcon (README).
#   test_support/setup_ros_pip.sh VENV
# Idempotent: the CMake builds are incremental. Builds go to VENV/build/<package>.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
VENV="$(cd "${1:?usage: setup_ros_pip.sh VENV}" && pwd)"
PY="$VENV/bin/python"

# The wheels' exported CMake targets name the wheel builder's interpreter headers and numpy
# (/opt/python/cpXY-cpXY/...); point them at this interpreter's. Only msg builds need this.
PY_INCLUDE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
NUMPY_INCLUDE="$("$PY" -c 'import numpy; print(numpy.get_include())')"
{ grep -rlE '/opt/python/cp3[0-9]+-cp3[0-9]+/' "$VENV/share" --include='*.cmake' || true; } \
  | xargs -r sed -i -E \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#$PY_INCLUDE#g" \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/(_core|core)/include#$NUMPY_INCLUDE#g"

# rosidl finds its type supports through the ament index, so the venv must be on
# AMENT_PREFIX_PATH while building (CMAKE_PREFIX_PATH alone is not enough).
export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH"

build() {  # build and install one ament_cmake package into the venv prefix
  local src="$1" name="$2"; shift 2
  local dir="$VENV/build/$name" log="$VENV/build/$name.log"
  mkdir -p "$dir"
  if ! { cmake -S "$src" -B "$dir" -DCMAKE_INSTALL_PREFIX="$VENV" -DBUILD_TESTING=OFF \
           -DPython3_EXECUTABLE="$PY" -DCMAKE_BUILD_TYPE=Release "$@" \
         && cmake --build "$dir" -j"$(nproc)" && cmake --install "$dir"; } >"$log" 2>&1; then
    tail -40 "$log"
    echo "setup_ros_pip.sh: building $name failed (full log: $log)" >&2
    exit 1
  fi
}

# A real ROS 2 ships tf2_msgs; the stand-in (TFMessage only) is built only where none imports,
# so it can never shadow the real package.
"$PY" -c 'import tf2_msgs.msg' 2>/dev/null || build "$HERE/ros_standins/tf2_msgs" tf2_msgs
# The Python packages are already installed in editable mode; install only messages, scripts,
# launch and config files.
build "$REPO" simplebev -DSIMPLEBEV_INSTALL_PYTHON=OFF
# The generated module comes with an egg-info named after the ROS package, `simplebev`, which is
# also the pip distribution name of this project: pip would take it for the project and delete
# the generated module on the next `pip install -e .`. Only the module itself is needed.
rm -rf "$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"/simplebev-*.egg-info
"$PY" -c 'import rclpy, tf2_msgs.msg, simplebev.msg'
