"""The node sets of ``launch/*.launch.py`` and ``sparse-perception launch``, described once.

Both the ROS 2 launch files (on a real install) and the built-in launcher (here, where
``ros2 launch`` cannot be installed) build their processes from :func:`node_set`, so they start
the same nodes with the same parameter files and remaps by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["NodeSpec", "NODE_SETS", "default_remaps", "node_set", "DEFAULT_TOPICS"]

CAMERAS = ("front", "front_right", "front_left", "back", "back_left", "back_right")

# Global topic names of the sensors (the synthetic bags and the nuScenes converter publish these).
DEFAULT_TOPICS: dict[str, str] = {
    **{f"cam_{c}/image": f"/cam_{c}/image" for c in CAMERAS},
    **{f"cam_{c}/camera_info": f"/cam_{c}/camera_info" for c in CAMERAS},
    "points": "/lidar_top/points",
}


@dataclass(frozen=True)
class NodeSpec:
    """One process: a ROS 2 executable (``package``/``executable``), or ``module`` run with Python here."""

    name: str
    package: str
    executable: str
    module: str
    params_files: tuple[str, ...] = ()
    remaps: tuple[tuple[str, str], ...] = ()
    arguments: tuple[str, ...] = ()
    parameters: dict = field(default_factory=dict)

    def ros_args(self, namespace: str = "") -> list[str]:
        """The ``--ros-args`` a process of this node gets (what launch_ros generates too)."""
        args = ["--ros-args", "-r", f"__node:={self.name}"]
        if namespace:
            args += ["-r", f"__ns:={namespace if namespace.startswith('/') else '/' + namespace}"]
        for f in self.params_files:
            args += ["--params-file", f]
        for k, v in self.parameters.items():
            args += ["-p", f"{k}:={str(v).lower() if isinstance(v, bool) else v}"]
        for src, dst in self.remaps:
            args += ["-r", f"{src}:={dst}"]
        return args


def default_remaps(topics: dict[str, str] | None = None) -> tuple[tuple[str, str], ...]:
    """Private input topics of the perception node -> global sensor topics."""
    topics = {**DEFAULT_TOPICS, **(topics or {})}
    return tuple((f"~/input/{k}", v) for k, v in topics.items())


def node_set(kind: str, params_file: str, bag: str = "", record_to: str = "", rate: float = 1.0,
             topics: dict[str, str] | None = None) -> list[NodeSpec]:
    """The nodes of ``kind``: ``"perception"`` (the node) or ``"replay"`` (player + node + recorder)."""
    if kind not in NODE_SETS:
        raise ValueError(f"unknown node set {kind!r}; known: {', '.join(NODE_SETS)}")
    perception = NodeSpec(name="perception", package="sparse_perception_ros", executable="perception_node",
                          module="sparse_perception_ros.ros.node", params_files=(params_file,),
                          remaps=default_remaps(topics))
    if kind == "perception":
        return [perception]
    if not bag:
        raise ValueError("the replay node set needs a bag (bag:=PATH)")
    player = NodeSpec(name="bag_player", package="sparse_perception_ros", executable="sparse-perception",
                      module="sparse_perception_ros.cli", arguments=("play", bag, "--rate", str(rate)))
    nodes = [perception, player]
    if record_to:
        recorder = NodeSpec(name="bag_recorder", package="sparse_perception_ros", executable="sparse-perception",
                            module="sparse_perception_ros.cli",
                            arguments=("record", "--out", record_to, "/perception/output/objects",
                                       "/perception/output/markers", "/perception/output/latency"))
        nodes.append(recorder)
    return nodes


NODE_SETS = ("perception", "replay")
