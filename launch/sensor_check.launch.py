"""Check a camera + LiDAR feed end to end on a real ROS 2 install.

    ros2 launch sparse_perception_ros sensor_check.launch.py \
        image:=/CAM_FRONT/image_rect_compressed compressed:=true \
        camera_info:=/CAM_FRONT/camera_info points:=/LIDAR_TOP

The node publishes ~/output/objects (Detection3DArray: the cloud's extent) and ~/output/markers
(for RViz, with a text line summarising the image, K and point count). Every process of the
system should use the same FastDDS profile; this launch file sets it for the node it starts.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    share = Path(get_package_share_directory("sparse_perception_ros"))
    args = [
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="camera image topic"),
        DeclareLaunchArgument("compressed", default_value="false", description="image topic is CompressedImage"),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info", description="CameraInfo topic"),
        DeclareLaunchArgument("points", default_value="/points", description="PointCloud2 topic"),
        DeclareLaunchArgument("fastdds_profile", default_value=str(share / "config" / "fastdds_large_data.xml"),
                              description="FastDDS XML profile (use the same one in every process)"),
    ]
    node = Node(
        package="sparse_perception_ros",
        executable="sensor_check",
        name="sensor_check",
        output="screen",
        parameters=[{"compressed": ParameterValue(LaunchConfiguration("compressed"), value_type=bool)}],
        remappings=[
            ("~/input/image", LaunchConfiguration("image")),
            ("~/input/camera_info", LaunchConfiguration("camera_info")),
            ("~/input/points", LaunchConfiguration("points")),
        ],
    )
    return LaunchDescription([*args, SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE",
                                                            LaunchConfiguration("fastdds_profile")), node])
