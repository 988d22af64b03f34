"""Unit tests of the evaluator's pieces: sample selection, keyframe frames, GT passthrough, message
parsing, output matching, split choice, the staged report folder and Ctrl-C handling."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from helpers.eval_data import make_dataset

from sparse_perception_ros.cli import evaluate as command
from sparse_perception_ros.eval import devkit, report
from sparse_perception_ros.eval.dataset import (
    load_frame,
    open_nuscenes,
    pose_matrix,
    select_samples,
)
from sparse_perception_ros.eval.ground_truth import GroundTruthPassthrough, gt_table, load_table, save_table
from sparse_perception_ros.eval.submission import boxes_to_global
from sparse_perception_ros.geometry.tf_buffer import TransformBuffer
from sparse_perception_ros.geometry.transforms import invert_transform, make_transform, quat_from_yaw
from sparse_perception_ros.sensors import CAMERA_CHANNELS


@pytest.fixture(scope="module")
def nusc(tmp_path_factory):
    root, _ = make_dataset(tmp_path_factory.mktemp("eval_units"))
    return open_nuscenes(root)


def test_select_samples_by_scene_and_count(nusc):
    all_ = select_samples(nusc)
    assert len(all_) == 16 and len({s.scene_name for s in all_}) == 2
    assert all(a.stamp_ns < b.stamp_ns for a, b in zip(all_, all_[1:], strict=False))
    second = all_[-1].scene_name
    only = select_samples(nusc, [second])
    assert len(only) == 8 and {s.scene_name for s in only} == {second}
    assert [s.token for s in select_samples(nusc, max_samples=3)] == [s.token for s in all_[:3]]
    with pytest.raises(ValueError, match="unknown scene"):
        select_samples(nusc, ["no-such-scene"])


def test_frame_extrinsics_compensate_ego_motion(nusc):
    ref = select_samples(nusc)[3]
    frame = load_frame(nusc, ref.token)
    sample = nusc.get("sample", ref.token)
    lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    lidar2ego = pose_matrix(nusc.get("calibrated_sensor", lidar["calibrated_sensor_token"]))
    assert frame.stamp_ns == ref.stamp_ns and frame.present.all() and frame.points.shape[1] == 4
    for i, ch in enumerate(CAMERA_CHANNELS):
        sd = nusc.get("sample_data", sample["data"][ch])
        cam2ego = pose_matrix(nusc.get("calibrated_sensor", sd["calibrated_sensor_token"]))
        static = invert_transform(cam2ego) @ lidar2ego  # no ego motion
        moved = np.linalg.norm(frame.T_cam_from_model[i][:3, 3] - static[:3, 3])
        dt = (frame.camera_stamps_ns[i] - frame.stamp_ns) * 1e-9
        assert moved <= 30.0 * abs(dt) + 1e-9  # at most the ego displacement during dt (< 30 m/s)
        if frame.camera_stamps_ns[i] == frame.stamp_ns:
            np.testing.assert_allclose(frame.T_cam_from_model[i], static, atol=1e-9)
        assert frame.images[i].shape == (90, 160, 3)


def test_gt_passthrough_round_trips_to_global(nusc, tmp_path):
    samples = select_samples(nusc)
    table = gt_table(nusc, samples)
    save_table(table, tmp_path / "gt.json")
    table = load_table(tmp_path / "gt.json")
    model = GroundTruthPassthrough(table)
    T = make_transform(quat_from_yaw(0.7), np.array([1200.0, -40.0, 2.0]))  # any pose of the model frame
    ref = samples[5]
    out, state = model.step(None, None, None, ref.stamp_ns * 1e-9, T, "state")
    assert state == "state" and out.scores.eq(1).all()
    g = boxes_to_global(out.boxes.numpy().astype(np.float64), T)
    np.testing.assert_allclose(g["translation"], table[ref.stamp_ns].boxes[:, :3], atol=1e-3)
    np.testing.assert_array_equal(out.instance_ids.numpy(), table[ref.stamp_ns].ids)
    between, _ = model.step(None, None, None, ref.stamp_ns * 1e-9 + 0.25, T, None)
    assert len(between.boxes) == 0


def test_detection_array_round_trip():
    pytest.importorskip("vision_msgs.msg", reason="vision_msgs not built in this environment")
    from sparse_perception_ros.eval.ros_mode import detection_array_to_boxes
    from sparse_perception_ros.eval.submission import DETECTION_NAMES
    from sparse_perception_ros.ros.messages import detections_to_msg
    from sparse_perception_ros.runtime.detections import Detections

    boxes = np.array([[10.0, -2.0, 0.5, 4.5, 1.9, 1.6, 0.3, 2.0, -1.0, 0.0],
                      [-5.0, 7.0, 0.9, 0.8, 0.7, 1.8, -2.5, 0.0, 0.5, 0.0]])
    msg = detections_to_msg(Detections(123, boxes, np.array([0.9, 0.4]), np.array([0, 8]), np.array([17, 4])),
                            DETECTION_NAMES, "base_link")
    b, s, lab, ids = detection_array_to_boxes(msg, DETECTION_NAMES)
    np.testing.assert_allclose(b, boxes, atol=1e-6)
    np.testing.assert_allclose(s, [0.9, 0.4], atol=1e-6)
    assert lab.tolist() == [0, 8] and ids.tolist() == [17, 4]


def test_match_outputs_uses_the_bag_tf_and_scores_missing_frames_empty():
    from sparse_perception_ros.eval.ros_mode import match_outputs

    tf = TransformBuffer(cache_time_ns=1 << 62)
    T = make_transform(quat_from_yaw(0.2), np.array([100.0, 50.0, 0.0]))
    tf.set_transform("odom", "base_link", 1000, T)
    side = {"samples": [{"sample_token": "a", "stamps_ns": {"LIDAR_TOP": 1000}},
                        {"sample_token": "b", "stamps_ns": {"LIDAR_TOP": 1000}},
                        {"sample_token": "c", "stamps_ns": {"LIDAR_TOP": 1000}}]}
    box = np.zeros((1, 10))
    outputs = {1000: ("base_link", box, np.ones(1), np.zeros(1, np.int64), np.zeros(1, np.int64))}
    results, missing = match_outputs(side, outputs, tf, {"a", "c"})
    assert [r.sample_token for r in results] == ["a", "c"] and missing == 0
    np.testing.assert_allclose(results[0].T_global_from_boxes, T)
    side["samples"][0]["stamps_ns"]["LIDAR_TOP"] = 999  # the node published nothing at that stamp
    tf.set_transform("odom", "base_link", 999, T)
    results, missing = match_outputs(side, outputs, tf, {"a"})
    assert missing == 1 and len(results[0].boxes) == 0


def test_split_covering_prefers_the_smallest_split(nusc):
    names = [s["name"] for s in nusc.scene]
    assert devkit.split_covering(nusc, names) == "synth_all"
    one = devkit.split_covering(nusc, names[:1])
    assert names[0] in __import__("json").loads(
        (__import__("pathlib").Path(nusc.dataroot) / nusc.version / "splits.json").read_text())[one]


def test_wrong_frame_warning_needs_predictions():
    m = {"classes_present": ["car"], "mAP_present": 0.0, "mATE_present": 1.0}
    assert devkit.wrong_frame_warning(m, 500.0, num_predictions=0) is None
    assert "global frame" in devkit.wrong_frame_warning(m, 500.0, num_predictions=10)
    assert devkit.wrong_frame_warning({**m, "mAP_present": 0.8, "mATE_present": 0.3}, 500.0, 10) is None


def test_interrupted_report_leaves_nothing(tmp_path):
    out = tmp_path / "report"
    with pytest.raises(KeyboardInterrupt), report.staged_folder(out) as tmp:
        (tmp / "metrics.json").write_text("{}")
        raise KeyboardInterrupt
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with report.staged_folder(out) as tmp:
        (tmp / "metrics.json").write_text("{}")
    assert (out / "metrics.json").is_file() and list(tmp_path.iterdir()) == [out]
    with pytest.raises(FileExistsError):
        with report.staged_folder(out):
            pass


def test_ctrl_c_exits_130_without_a_report(monkeypatch, tmp_path, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "evaluate", interrupted)
    assert command.run(argparse.Namespace()) == 130
    assert "no report written" in capsys.readouterr().err


def test_latency_percentiles():
    lat = report.latency_percentiles([{"infer": float(i), "decode": 1.0} for i in range(101)])
    assert lat["infer"]["p50"] == 50.0 and lat["infer"]["p99"] == 99.0 and lat["decode"]["n"] == 101


def test_cli_refuses_bad_input_cleanly(nusc, tmp_path, capsys):
    from sparse_perception_ros.cli import main

    assert main(["eval", "--dataroot", str(tmp_path), "--offline", "--out", str(tmp_path / "r")]) == 2
    assert "no nuScenes table folder" in capsys.readouterr().err and not (tmp_path / "r").exists()
    assert main(["eval", "--dataroot", nusc.dataroot, "--offline", "--scenes", "nope", "--out",
                 str(tmp_path / "r")]) == 2
    assert "unknown scene" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_replay_specs_keep_the_launch_node_set(tmp_path):
    from sparse_perception_ros.cli.eval_ros import replay_specs
    from sparse_perception_ros.launch_manifest import node_set
    from sparse_perception_ros.paths import config_file

    params = str(config_file("perception.param.yaml"))
    base = {s.name: s for s in node_set("replay", params, bag="B", record_to="R", rate=0.5)}
    specs = {s.name: s for s in replay_specs("B", "R", params, "onnxruntime", None, rate=0.5, compressed=True,
                                             preset="tiny")}
    assert specs.keys() == base.keys()
    node = specs["perception"]
    assert node.module == base["perception"].module and node.remaps == base["perception"].remaps
    assert node.params_files == (params,)
    assert node.parameters["model.backend"] == "onnxruntime" and node.parameters["model.preset"] == "tiny"
    assert node.parameters["cameras.compressed"] is True
    assert node.parameters["use_sim_time"] is True and not any(k.startswith("sync.") for k in node.parameters)
    player = specs["bag_player"]
    assert player.module == "sparse_perception_ros.cli.replay_gate"
    play_args = player.arguments[player.arguments.index("--") + 1:]
    assert play_args[:3] == base["bag_player"].arguments[1:] and "/lidar_top/points" in play_args
    assert "/diagnostics" in specs["bag_recorder"].arguments
    gt = {s.name: s for s in replay_specs("B", "R", params, "debug_ground_truth", "gt.json")}["perception"]
    assert gt.module == "sparse_perception_ros.cli.gt_node" and gt.arguments == ("--gt-table", "gt.json")
    assert "model.backend" not in gt.parameters


def test_recall_ceiling_is_the_share_of_gt_reachable_with_k_outputs():
    """sum(min(n, K)) / sum(n): samples with more GT boxes than K lose the excess, others nothing."""
    from sparse_perception_ros.eval.devkit import recall_ceiling

    assert recall_ceiling([10, 50, 40], 32) == pytest.approx((10 + 32 + 32) / 100)
    assert recall_ceiling([10, 50, 40], 100) == 1.0
    assert recall_ceiling([0, 0], 32) is None and recall_ceiling([5], None) is None


def test_a_ros_run_that_lost_keyframes_warns_with_the_remedy():
    from sparse_perception_ros.cli.eval_ros import missing_output_warning

    assert missing_output_warning(0, 80) is None
    assert missing_output_warning(8, 80) is None  # 10 %: a few at a bag's ends are normal
    warning = missing_output_warning(72, 80)
    assert "72 of 80" in warning and "--rate" in warning and "--no-sweeps" in warning


def test_ros_eval_takes_a_dds_domain_of_its_own(monkeypatch, tmp_path):
    """Without ROS_DOMAIN_ID the ROS-mode eval picks a private domain before anything joins DDS (two
    evals on one domain fed each other's bags); a user's ROS_DOMAIN_ID is kept; --offline leaves it."""
    import os

    def stop(args):  # the first step after the domain is chosen
        raise RuntimeError("stop here")

    monkeypatch.setattr("sparse_perception_ros.eval.settings.resolve_params", stop)
    args = argparse.Namespace(jobs=1, offline=False)
    monkeypatch.delenv("ROS_DOMAIN_ID", raising=False)
    with pytest.raises(RuntimeError, match="stop here"):
        command.evaluate(args)
    assert 1 <= int(os.environ["ROS_DOMAIN_ID"]) <= 100
    monkeypatch.setenv("ROS_DOMAIN_ID", "42")
    with pytest.raises(RuntimeError, match="stop here"):
        command.evaluate(args)
    assert os.environ["ROS_DOMAIN_ID"] == "42"
    monkeypatch.delenv("ROS_DOMAIN_ID")
    with pytest.raises(RuntimeError, match="stop here"):
        command.evaluate(argparse.Namespace(jobs=1, offline=True))
    assert "ROS_DOMAIN_ID" not in os.environ
