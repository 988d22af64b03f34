"""The node sets of ``launch/*.launch.py`` and ``sparse-perception launch``, described once.

Both the ROS 2 launch files (on a real install) and the built-in launcher (here, where
``ros2 launch`` cannot be installed) build their processes from :func:`node_set`, so they start
the same nodes with the same parameter files and remaps by construction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from sparse_perception_ros.paths import config_file
from sparse_perception_ros.sensors import DEFAULT_TOPICS

__all__ = ["NodeSpec", "NODE_SETS", "default_remaps", "node_set", "load_topics", "launch_topics", "params_files"]

_INPUT_KEY = re.compile(r"^(points|odometry|[^/\s]+/(image|image/compressed|camera_info))$")


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
    """Private input topics of the perception node -> global sensor topics.

    ``topics`` (input key -> topic, as :func:`load_topics` reads them) replaces or adds to
    :data:`DEFAULT_TOPICS`. A ``<name>/image`` entry also remaps ``<name>/image/compressed`` (the
    node's topic with ``cameras.compressed``), unless that key is given too: one entry per camera
    whatever its transport.
    """
    merged = {**DEFAULT_TOPICS, **(topics or {})}
    for key in list(merged):
        if key.endswith("/image") and f"{key}/compressed" not in merged:
            merged[f"{key}/compressed"] = merged[key]
    return tuple((f"~/input/{k}", v) for k, v in merged.items())


def load_topics(path: str | Path) -> dict[str, str]:
    """A topics file: the node's input keys -> the topics to remap them to.

    YAML, flat or nested by camera name (nested keys are joined with ``/``)::

        points: /sensing/lidar/top/pointcloud
        odometry: /localization/kinematic_state
        front:
          image: /sensing/camera/front/image_raw/compressed
          camera_info: /sensing/camera/front/camera_info

    Keys are ``points``, ``odometry``, ``<camera>/image``, ``<camera>/image/compressed`` and
    ``<camera>/camera_info``. Raises ValueError naming the file and the offending key.
    """
    import yaml  # lazy: yaml costs ~13 ms and the CLI imports this module for --help

    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read the topics file {path}: {exc}") from exc
    doc = {} if doc is None else doc
    if not isinstance(doc, dict):
        raise ValueError(f"topics file {path}: the top level must be a mapping of input -> topic")

    def walk(tree: dict, prefix: str) -> dict[str, str]:
        out = {}
        for key, value in tree.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                out.update(walk(value, name + "/"))
            elif not _INPUT_KEY.match(name):
                raise ValueError(f"topics file {path}: '{name}' is not an input of the perception node (known: "
                                 "points, odometry, <camera>/image, <camera>/image/compressed, <camera>/camera_info)")
            elif not isinstance(value, str) or not value:
                raise ValueError(f"topics file {path}: '{name}' must be a topic name, got {value!r}")
            else:
                out[name] = value
        return out

    return walk(doc, "")


def launch_topics(topics_file: str = "", points: str = "", odometry: str = "") -> dict[str, str]:
    """The input remaps a launch file's arguments ask for (input key -> topic, for :func:`node_set`):
    ``topics_file`` read by :func:`load_topics`, then ``points`` and ``odometry`` where given ("" = not given)."""
    topics = load_topics(topics_file) if topics_file else {}
    topics.update({key: topic for key, topic in (("points", points), ("odometry", odometry)) if topic})
    return topics


def params_files(user_file: str = "") -> tuple[str, ...]:
    """The node's ``--params-file`` list: ``user_file`` alone, or the package's ``config/perception.param.yaml``
    when there is none.

    The node itself declares every parameter with the package file's value as its default (ros/params.py),
    so the package file is always the base and a user file names only what it changes. Both files are not
    passed: with one parameter in two ``/**`` files, rcl ignores a later ``-p`` for it (measured with
    rclpy 9: ``--params-file a --params-file b -p k:=v`` gives b's value), which broke the launcher's own
    ``-p`` overrides (``cameras.compressed`` for a replay) and a user's ``--ros-args -p``.
    """
    if user_file:
        return (str(user_file),)
    return (str(config_file("perception.param.yaml")),)


def node_set(kind: str, params_file: str, bag: str = "", record_to: str = "", rate: float = 1.0,
             topics: dict[str, str] | None = None) -> list[NodeSpec]:
    """The nodes of ``kind``: ``"perception"`` (the node) or ``"replay"`` (player + node + recorder).

    ``params_file`` is the user's params file ("" = none): it overrides the package's
    ``config/perception.param.yaml``, so it needs only the parameters it changes (:func:`params_files`).
    ``topics`` remaps the node's inputs (:func:`default_remaps`).
    """
    if kind not in NODE_SETS:
        raise ValueError(f"unknown node set {kind!r}; known: {', '.join(NODE_SETS)}")
    perception = NodeSpec(name="perception", package="sparse_perception_ros", executable="perception_node",
                          module="sparse_perception_ros.cli.perception_node", params_files=params_files(params_file),
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
