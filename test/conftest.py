"""Shared pytest setup.

ROS tests talk over real DDS. Each pytest process picks its own ROS_DOMAIN_ID (children inherit it)
so parallel runs on one machine cannot hear each other, and every participant uses the project's
FastDDS profile (config/fastdds_large_data.xml), as the README asks of a real system.

Under pytest-xdist (``make test`` runs ``-n 2 --dist loadfile``) the controller picks the session's
base id (from its pid, or the ROS_DOMAIN_ID you set) and worker ``gwN`` uses base + N, wrapped into
0..101 (the ids whose DDS ports are clear of Linux's ephemeral range): the workers of one session
never share a domain, so two node tests running side by side cannot see each other's topics.
"""

import os
import random
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _domain_id() -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # "gw0", "gw1", ... only in an xdist worker
    given = os.environ.get("ROS_DOMAIN_ID")
    if worker is None:
        return given or str(random.Random(os.getpid()).randint(1, 100))
    # the controller's conftest set the base before the workers were spawned; the parent pid is the
    # fallback for a controller that did not load this file, so all workers still agree on the base
    base = int(given) if given else random.Random(os.getppid()).randint(1, 100)
    return str((base + int(worker.removeprefix("gw"))) % 102)


os.environ["ROS_DOMAIN_ID"] = _domain_id()
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(REPO_ROOT / "config" / "fastdds_large_data.xml"))
os.environ.setdefault("RCUTILS_LOGGING_BUFFERED_STREAM", "1")
# One intra-op thread per process: on a loaded 2-core machine OpenMP's spinning threads make
# small models 10-50x slower (measured: tiny preset step 64 ms with 1 thread, 0.5-4 s with 2).
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Under xdist the files are handed out in collection order; the slowest first (measured per-file totals,
# 2-core machine, serial run: 40-90 s each) so that no long file starts last while the other worker idles.
# A file missing from this list only runs later; the order inside a file is kept.
SLOWEST_FILES = (
    "test_ros_node.py", "test_eval_ros.py", "test_ros_vehicle_example.py", "test_export_step.py",
    "test_camera_count.py", "test_ros_node_fusion.py", "test_ros_node_health.py", "test_train_smoke.py",
    "test_train_fusion.py", "test_model_fusion.py", "test_colcon_install.py", "test_bag_player.py",
    "test_demo.py", "test_ros_node_variants.py", "test_ros_replay.py", "test_ros_node_sim_time.py",
)


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # a plain run keeps pytest's order
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: all else keeps its order


@pytest.fixture(scope="module")
def head():
    """The tiny preset's head, random weights seeded 0 (anchors: the deterministic placeholder prior);
    one per test module, so a module's tests share it and no module sees another's changes."""
    import torch  # lazy: torch is heavy, the ROS and config tests never need it

    from sparse_perception_ros.model import build_head  # lazy: imports torch

    torch.manual_seed(0)
    return build_head("tiny")


@pytest.fixture
def text_file(tmp_path):
    """``text_file(name, text) -> Path``: writes ``text`` to ``name`` in the test's temporary folder."""
    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path
    return write
