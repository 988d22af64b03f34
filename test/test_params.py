"""Parameters: the shipped file validates, every error names its parameter, README table is generated."""

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from sparse_perception_ros.params import ParameterError, flatten, load_params, markdown_table, params_from_flat

REPO = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((REPO / "config" / "perception.param.yaml").read_text())["/**"]["ros__parameters"]


def test_shipped_params_load_into_frozen_dataclass():
    p = load_params()
    assert p.sync.max_camera_time_diff == 0.15 and p.temporal.max_time_gap == 2.0
    assert p.cameras.names[0] == "front" and isinstance(p.cameras.names, tuple)
    with pytest.raises(AttributeError):
        p.qos_depth = 5


def test_flat_ros_names_round_trip():
    flat = flatten(DEFAULT)
    assert "sync.max_camera_time_diff" in flat and "qos_depth" in flat
    assert params_from_flat(flat) == load_params()


@pytest.mark.parametrize("name,value,needle", [
    ("sync.max_camera_time_diff", -0.1, "sync.max_camera_time_diff"),
    ("model.backend", "tensorflow", "model.backend"),
    ("output.max_detections", 0, "output.max_detections"),
    ("qos_depth", "one", "qos_depth"),
    ("sync.trigger", "CAM_SIDE", "sync.trigger"),
    ("frames.world_frame", "lidar_top", "frames.world_frame"),
    ("cameras.names", ["A", "A"], "cameras.names"),
    ("output.score_threshold", "0.3", "output.score_threshold"),
    ("output.score_threshold", "automatic", "output.score_threshold"),
    ("output.score_threshold", 1.5, "output.score_threshold"),
    ("temporal.duplicate_iou", 1.01, "temporal.duplicate_iou"),
])
def test_bad_value_is_refused_naming_the_parameter(name, value, needle):
    flat = flatten(copy.deepcopy(DEFAULT))
    flat[name] = value
    with pytest.raises(ParameterError) as err:
        params_from_flat(flat)
    assert err.value.name == needle and f"'{needle}'" in str(err.value)


def test_missing_parameter_has_no_silent_default():
    flat = flatten(DEFAULT)
    del flat["sync.wait_timeout"]
    with pytest.raises(ParameterError, match="'sync.wait_timeout': is required"):
        params_from_flat(flat)


def test_unknown_parameter_is_refused():
    flat = flatten(DEFAULT)
    flat["sync.max_camera_timediff"] = 0.2
    with pytest.raises(ParameterError, match="'sync.max_camera_timediff': is not a known parameter"):
        params_from_flat(flat)


@pytest.mark.parametrize("text,match", [
    pytest.param("perception:\n  [unclosed", "cannot read", id="not_yaml"),
    pytest.param("other_node:\n  ros__parameters: {}\n", "no '/\\*\\*'", id="other_node_only"),
])
def test_unreadable_params_file(text_file, text, match):
    with pytest.raises(ParameterError, match=match):
        load_params(text_file("p.yaml", text))


def test_readme_parameter_table_is_the_generated_one():
    readme = (REPO / "README.md").read_text()
    start, end = "<!-- params:begin (generated: python -m sparse_perception_ros.params) -->", "<!-- params:end -->"
    assert start in readme and end in readme
    table = readme.split(start)[1].split(end)[0].strip()
    assert table == markdown_table()


@pytest.mark.parametrize("text", [
    "/**:\n  ros__parameters:\n    sync:\n      wait_timeout: 0.3\n",
    "perception:\n  ros__parameters:\n    sync.wait_timeout: 0.3\n",  # node-name keyed, dotted name
    "/perception:\n  ros__parameters:\n    sync: {wait_timeout: 0.3}\n",
])
def test_user_file_with_one_parameter_overrides_the_package_defaults(tmp_path, text):
    """Point 9: the package's file is loaded first; the user's names only what it changes."""
    f = tmp_path / "mine.yaml"
    f.write_text(text)
    p = load_params(f)
    package = load_params()
    assert p.sync.wait_timeout == 0.3
    assert p == replace(package, sync=replace(package.sync, wait_timeout=0.3))  # everything else: the package's


def test_user_file_sections_apply_in_file_order(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("/**:\n  ros__parameters:\n    qos_depth: 3\n    output: {max_detections: 9}\n"
                 "perception:\n  ros__parameters:\n    qos_depth: 4\n")
    p = load_params(f)
    assert p.qos_depth == 4 and p.output.max_detections == 9


def test_user_file_errors_still_name_the_parameter(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("/**:\n  ros__parameters:\n    sync: {max_camera_timediff: 0.2}\n")
    with pytest.raises(ParameterError, match="'sync.max_camera_timediff': is not a known parameter"):
        load_params(f)
    f.write_text("/**:\n  ros__parameters:\n    output.max_detections: 0\n")
    with pytest.raises(ParameterError) as err:
        load_params(f)
    assert err.value.name == "output.max_detections"


@pytest.mark.parametrize("value", ["auto", 0, 0.45, 1])
def test_score_threshold_is_auto_or_a_number(value):
    flat = flatten(copy.deepcopy(DEFAULT))
    assert flat["output.score_threshold"] == "auto"  # the shipped default: the weights' own threshold
    flat["output.score_threshold"] = value
    assert params_from_flat(flat).output.score_threshold == value
    assert "| `output.score_threshold` | number or string | `auto` | >= 0 <= 1, or `auto` |" in markdown_table()
