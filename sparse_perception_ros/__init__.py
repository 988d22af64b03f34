"""sparse_perception_ros: Sparse4D-v3 style multi-camera + LiDAR 3D detection and tracking for ROS 2.

The package is split into a ROS-free core (``geometry``, ``model``, ``ops``, ``runtime``,
``data``, ``eval``, ``train``) and a thin rclpy adapter (``ros``). Only ``ros`` imports rclpy.
"""

__version__ = "0.1.0"
