"""``sparse-perception eval --offline`` scores the same with the node's torch backend and ONNX Runtime.

Both run the one exported step function (eager torch with the C DFA kernel vs the ONNX graph
with its custom node), so NDS, mAP and AMOTA agree to 4 decimals on the tiny synthetic set
(2 scenes x 8 keyframes), scored by the real nuscenes-devkit with the bundled camera model.
"""

from __future__ import annotations

import json

import pytest
from helpers.eval_data import make_dataset

from sparse_perception_ros.cli import main


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root, _ = make_dataset(tmp_path_factory.mktemp("eval_backends"))
    return root


def test_offline_eval_scores_are_the_same_with_torch_and_onnxruntime(root, tmp_path):
    metrics = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / f"report_{backend}"
        assert main(["eval", "--dataroot", str(root), "--offline", "--backend", backend, "--score-threshold", "0.05",
                     "--out", str(out), "--pictures", "0", "--no-plots", "--quiet"]) == 0
        doc = json.loads((out / "metrics.json").read_text())
        assert doc["run"]["backend"] == backend and "RANDOM" not in doc["run"]["data_note"]
        metrics[backend] = doc["metrics"]
    t, o = metrics["torch"], metrics["onnxruntime"]
    assert t["mAP"] > 0.0 and t["NDS"] > 0.0, t  # the bundled model finds something: the comparison means something
    for key in ("NDS", "mAP", "AMOTA"):
        assert round(t[key], 4) == round(o[key], 4), (key, t[key], o[key])
