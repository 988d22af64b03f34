"""Replay a bag through the perception node and record its outputs (real ROS 2 installs).

    ros2 launch sparse_perception_ros replay.launch.py bag:=/path/to/bag [record_to:=/path/out] [rate:=1.0]
        [params_file:=my.param.yaml] [topics_file:=my_topics.yaml] [points:=...] [odometry:=...]

Starts the bag player, the perception node and (with record_to) the recorder, each its own
process, exactly as ``sparse-perception launch replay --bag ... --record-to ...`` does here: both
read sparse_perception_ros.launch_manifest. ``params_file`` is loaded after the package's
config/perception.param.yaml; ``topics_file``, ``points`` and ``odometry`` remap the node's inputs to
the bag's topics (as in perception.launch.py).
"""

import sys
from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from sparse_perception_ros.launch_manifest import launch_topics, node_set


def _nodes(context):
    arg = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    topics = launch_topics(arg("topics_file"), points=arg("points"), odometry=arg("odometry"))
    actions = []
    for spec in node_set("replay", arg("params_file"), bag=arg("bag"), record_to=arg("record_to"),
                         rate=float(arg("rate")), topics=topics):
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
        DeclareLaunchArgument("params_file", default_value="",
                              description="your node parameters, loaded after the package's "
                                          "config/perception.param.yaml (name only what you change)"),
        DeclareLaunchArgument("topics_file", default_value="",
                              description="YAML remapping the node's inputs to the bag's topics: points, odometry, "
                                          "<camera>/image, <camera>/camera_info"),
        DeclareLaunchArgument("points", default_value="", description="remap ~/input/points to this topic"),
        DeclareLaunchArgument("odometry", default_value="", description="remap ~/input/odometry to this topic"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("fastdds_profile", default_value=str(share / "config" / "fastdds_large_data.xml"),
                              description="FastDDS XML profile (use the same one in every process)"),
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", LaunchConfiguration("fastdds_profile")),
        OpaqueFunction(function=_nodes),
    ])
