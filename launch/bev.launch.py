"""ros2 launch simplebev bev.launch.py [params_file:=...] [checkpoint:=...] [device:=...]
    [use_sim_time:=...]

Starts simplebev_node with a params file (default: the package's config/simplebev.yaml; a
training run's config.yaml works as is). Remappings on the command line pass through.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("simplebev"), "config",
                                  "simplebev.yaml")
    args = [
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="ROS 2 params file (config/simplebev.yaml layout)"),
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="checkpoint file or run directory "
                                          "(overrides node.checkpoint)"),
        DeclareLaunchArgument("device", default_value="",
                              description="auto | cpu | cuda | cuda:N (overrides node.device)"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="follow /clock (bag replay)"),
    ]
    node = Node(
        package="simplebev",
        executable="bev_node",
        name="simplebev_node",
        output="screen",
        parameters=[
            LaunchConfiguration("params_file"),
            # Typed, so an empty string stays a string (not YAML's null).
            {"checkpoint": ParameterValue(LaunchConfiguration("checkpoint"), value_type=str),
             "device": ParameterValue(LaunchConfiguration("device"), value_type=str),
             "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)},
        ],
    )
    return LaunchDescription(args + [node])
