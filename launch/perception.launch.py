"""The perception node with its parameters and topic remaps (real ROS 2 installs).

    ros2 launch sparse_perception_ros perception.launch.py [params_file:=my.param.yaml]
        [topics_file:=my_topics.yaml] [points:=/my/lidar] [odometry:=/my/odom]
        [checkpoint:=...] [backend:=torch|onnxruntime|tensorrt] [namespace:=...]

``params_file`` is loaded after the package's config/perception.param.yaml, so it names only what
it changes. ``topics_file`` remaps the node's inputs (points, odometry, <camera>/image,
<camera>/camera_info; see launch_manifest.load_topics); ``points`` and ``odometry`` remap one input
each. The same node set starts without ros2 launch via ``sparse-perception launch perception``
(``--params-file``, ``--topics-file``, ``--ros-args``); both read sparse_perception_ros.launch_manifest,
so nodes, parameter files and remaps agree.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from sparse_perception_ros.launch_manifest import launch_topics, node_set


def _nodes(context):
    arg = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    overrides = {k: v for k, v in (("model.checkpoint", arg("checkpoint")), ("model.backend", arg("backend"))) if v}
    topics = launch_topics(arg("topics_file"), points=arg("points"), odometry=arg("odometry"))
    actions = []
    for spec in node_set("perception", arg("params_file"), topics=topics):
        actions.append(Node(package=spec.package, executable=spec.executable, name=spec.name,
                            namespace=arg("namespace"), output="screen",
                            parameters=[*spec.params_files, {**spec.parameters, **overrides}],
                            remappings=list(spec.remaps)))
    return actions


def generate_launch_description():
    share = Path(get_package_share_directory("sparse_perception_ros"))
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value="",
                              description="your node parameters, loaded after the package's "
                                          "config/perception.param.yaml (name only what you change)"),
        DeclareLaunchArgument("topics_file", default_value="",
                              description="YAML remapping the node's inputs: points, odometry, <camera>/image, "
                                          "<camera>/camera_info"),
        DeclareLaunchArgument("points", default_value="", description="remap ~/input/points to this topic"),
        DeclareLaunchArgument("odometry", default_value="", description="remap ~/input/odometry to this topic"),
        DeclareLaunchArgument("checkpoint", default_value="", description="override model.checkpoint"),
        DeclareLaunchArgument("backend", default_value="", description="override model.backend"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("fastdds_profile", default_value=str(share / "config" / "fastdds_large_data.xml"),
                              description="FastDDS XML profile (use the same one in every process)"),
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", LaunchConfiguration("fastdds_profile")),
        OpaqueFunction(function=_nodes),
    ])
