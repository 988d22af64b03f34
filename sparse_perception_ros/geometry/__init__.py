"""Rigid transforms, quaternions, boxes and cameras. numpy only, no ROS, no torch."""
