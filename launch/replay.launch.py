"""Replay a bag through the perception node and record its outputs (real ROS 2 installs).

    ros2 launch sparse_perception_ros replay.launch.py bag:=/path/to/bag [record_to:=/path/out] [rate:=1.0]

Starts the bag player, the perception node and (with record_to) the recorder, each its own
process, exactly as ``sparse-perception launch replay --bag ... --record-to ...`` does here: both
read sparse_perception_ros.launch_manifest.
"""

import sys
from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from sparse_perception_ros.launch_manifest import node_set


def _nodes(context):
    arg = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    actions = []
    for spec in node_set("replay", arg("params_file"), bag=arg("bag"), record_to=arg("record_to"),
                         rate=float(arg("rate"))):
        if spec.module.endswith(".cli"):  # the player and recorder are tools of our CLI
            actions.append(ExecuteProcess(cmd=[sys.executable, "-m", spec.module, *spec.arguments],
                                          name=spec.name, output="screen"))
        else:
            actions.append(Node(package=spec.package, executable=spec.executable, name=spec.name,
                                namespace=arg("namespace"), output="screen",
                                parameters=[*spec.params_files, spec.parameters], remappings=list(spec.remaps)))
    return actions


def generate_launch_description():
    share = Path(get_package_share_directory("sparse_perception_ros"))
    return LaunchDescription([
        DeclareLaunchArgument("bag", description="bag to play (MCAP or sqlite3 folder)"),
        DeclareLaunchArgument("record_to", default_value="", description="record the node's outputs here"),
        DeclareLaunchArgument("rate", default_value="1.0", description="playback rate"),
        DeclareLaunchArgument("params_file", default_value=str(share / "config" / "perception.param.yaml"),
                              description="node parameters (CPU preset by default)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("fastdds_profile", default_value=str(share / "config" / "fastdds_large_data.xml"),
                              description="FastDDS XML profile (use the same one in every process)"),
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", LaunchConfiguration("fastdds_profile")),
        OpaqueFunction(function=_nodes),
    ])
