"""ament_python package definition (works with colcon on a ROS 2 install and with pip in .venv)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "sparse_perception_ros"


def files(pattern: str) -> list[str]:
    return sorted(p for p in glob(pattern, recursive=True) if not p.endswith("/"))


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "bench", "bench.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", files("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", files("config/*.yaml") + files("config/*.xml") + files("config/*.json") + files("config/*.rviz")),
        (f"share/{PACKAGE}/models", files("models/*.pt") + files("models/*.sha256") + files("models/*.json") + files("models/*.md")
         + files("models/*.onnx")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="sparse_perception_ros maintainers",
    maintainer_email="maintainers@sparse-perception.invalid",
    description="Sparse4D-v3 style multi-camera + LiDAR 3D detection and tracking node for ROS 2.",
    license="Apache-2.0",
    extras_require={"test": ["pytest"]},  # not tests_require: current setuptools warns "Unknown distribution option"
    entry_points={
        "console_scripts": [
            "sparse-perception = sparse_perception_ros.cli:main",
            "sensor_check = sparse_perception_ros.ros.sensor_check_node:main",
            "perception_node = sparse_perception_ros.cli.perception_node:main",
        ],
    },
)
