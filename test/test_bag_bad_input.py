"""Bad input gives a clear error that names the file, and leaves no partial output that looks complete:
truncated / corrupt bags, an unknown message type, a missing nuScenes table, a missing sample file,
an existing output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_data_synth import VERSION, small_dataset

from sparse_perception_ros.data import bagio
from sparse_perception_ros.data.atomic import DataError


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "sparse_perception_ros.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return small_dataset(tmp_path_factory)


def _bag_copy(data, tmp_path) -> Path:
    src = sorted(data[1].iterdir())[0]
    dst = tmp_path / "bag"
    shutil.copytree(src, dst)
    return dst


def _read_all(path) -> int:
    reader = bagio.open_reader(path)
    try:
        return sum(1 for _ in bagio.iter_messages(reader))
    finally:
        reader.close()


def test_truncated_bag(data, tmp_path):
    bag = _bag_copy(data, tmp_path)
    f = next(bag.glob("*.mcap"))
    os.truncate(f, f.stat().st_size // 2)
    with pytest.raises(DataError, match=str(bag)):
        _read_all(bag)
    r = _cli("play", bag, "--wait", "0")
    assert r.returncode != 0 and str(bag) in r.stderr and "Traceback" not in r.stderr


def test_corrupt_bag(data, tmp_path):
    bag = _bag_copy(data, tmp_path)
    f = next(bag.glob("*.mcap"))
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 3: len(raw) // 3 + 4000] = b"\xab" * 4000
    f.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="corrupt or truncated bag .*" + bag.name):
        _read_all(bag)


def test_missing_bag(tmp_path):
    r = _cli("play", tmp_path / "nope", "--wait", "0")
    assert r.returncode != 0 and str(tmp_path / "nope") in r.stderr


def test_unknown_message_type(tmp_path):
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    store.register(get_types_from_msg("int32 value", "no_such_pkg/msg/Thing"))
    bag = tmp_path / "odd"
    w = Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP)
    w.open()
    conn = w.add_connection("/thing", "no_such_pkg/msg/Thing", typestore=store)
    cls = store.types["no_such_pkg/msg/Thing"]
    w.write(conn, 1, store.serialize_cdr(cls(value=3), "no_such_pkg/msg/Thing"))
    w.close()
    r = _cli("play", bag, "--wait", "0")
    assert r.returncode != 0 and "no_such_pkg/msg/Thing" in r.stderr and str(bag) in r.stderr
    with pytest.raises(DataError, match="no_such_pkg/msg/Thing"):
        bagio.ensure_type(bagio.typestore(), "no_such_pkg/msg/Thing")


def _nuscenes_copy(root: Path, tmp_path: Path) -> Path:
    """A new root sharing the sensor files (symlinks) with its own copy of the tables."""
    new = tmp_path / "nus"
    new.mkdir()
    for name in ("samples", "sweeps", "maps"):
        (new / name).symlink_to(root / name)
    shutil.copytree(root / VERSION, new / VERSION)
    return new


def test_missing_table(data, tmp_path):
    root = _nuscenes_copy(data[0], tmp_path)
    (root / VERSION / "sample_annotation.json").unlink()
    out = tmp_path / "out"
    r = _cli("to-bag", root, "--out", out)
    assert r.returncode == 1
    assert str(root / VERSION / "sample_annotation.json") in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() or not any(out.iterdir())


def test_missing_sample_file_leaves_no_partial_bag(data, tmp_path):
    root = _nuscenes_copy(data[0], tmp_path)
    table = root / VERSION / "sample_data.json"
    rows = json.loads(table.read_text())
    scene1 = json.loads((root / VERSION / "scene.json").read_text())[1]["name"]
    victim = [r for r in rows if scene1 in r["filename"] and r["fileformat"] == "jpg"][30]
    victim["filename"] = victim["filename"].replace(".jpg", "_gone.jpg")
    table.write_text(json.dumps(rows))
    out = tmp_path / "out"
    r = _cli("to-bag", root, "--out", out)
    assert r.returncode == 1
    assert str(root / victim["filename"]) in r.stderr and "Traceback" not in r.stderr
    left = sorted(p.name for p in out.iterdir())
    assert scene1 not in left and not any(".partial" in n for n in left)  # scene 0 finished, scene 1 left nothing


def test_existing_output_is_refused(data, tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    r = _cli("synth", "--out", out, "--scenes", 1, "--keyframes", 1, "--width", 64, "--height", 36)
    assert r.returncode != 0 and str(out) in r.stderr and "--overwrite" in r.stderr


def test_failed_generation_leaves_nothing(tmp_path, monkeypatch):
    from sparse_perception_ros.data import nuscenes_writer
    from sparse_perception_ros.data.generator import SynthConfig
    from sparse_perception_ros.data.synth import synthesize

    def boom(*_a, **_k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(nuscenes_writer.json, "dumps", boom)
    cfg = SynthConfig(scenes=1, keyframes=2, width=64, height=36, azimuth_steps=90, objects=5)
    with pytest.raises(RuntimeError, match="disk full"):
        synthesize(cfg, out=str(tmp_path / "ds"), bag_out=str(tmp_path / "bags"))
    assert not (tmp_path / "ds").exists()
    assert not any("partial" in p.name for p in tmp_path.iterdir())
    assert not (tmp_path / "bags").exists() or not any((tmp_path / "bags").iterdir())
