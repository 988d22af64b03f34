"""``sparse-perception eval --jobs N``: shards of whole scenes in parallel processes, merged, scored once.

On the tiny synthetic set (2 scenes x 8 keyframes) with the bundled camera model (torch backend,
offline): ``--jobs 2`` (one process per scene) writes byte-identical submissions (boxes, scores,
track ids) and so identical devkit metrics to ``--jobs 1``. A shard that fails fails the whole run
with its log named and kept, and no report (no partial score) is written.
"""

from __future__ import annotations

import json
import shutil

import pytest
from helpers.eval_data import make_dataset

from sparse_perception_ros.cli import main
from sparse_perception_ros.eval.dataset import SampleRef
from sparse_perception_ros.eval.shards import plan_shards


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root, _ = make_dataset(tmp_path_factory.mktemp("eval_jobs"))
    return root


def _eval(root, out, jobs: int) -> int:
    return main(["eval", "--dataroot", str(root), "--offline", "--backend", "torch", "--score-threshold", "0.05",
                 "--out", str(out), "--pictures", "0", "--no-plots", "--quiet", "--jobs", str(jobs)])


def test_plan_shards_keeps_scenes_whole_and_balanced():
    refs = [SampleRef(f"t{i}", f"s{i // 4}", i) for i in range(20)] + [SampleRef("u", "s9", 99)]  # 5 x 4 + 1
    shards = plan_shards(refs, 3)
    assert [r for s in shards for r in s] == refs  # every keyframe once, in order
    scenes = [{r.scene_name for r in s} for s in shards]
    assert all(not (a & b) for i, a in enumerate(scenes) for b in scenes[i + 1:])  # no scene split
    assert [len(s) for s in shards] == [8, 8, 5]
    assert len(plan_shards(refs[:4], 8)) == 1  # never more shards than scenes


def test_jobs_two_scores_exactly_as_jobs_one(root, tmp_path):
    assert _eval(root, tmp_path / "seq", 1) == 0
    assert _eval(root, tmp_path / "par", 2) == 0
    for name in ("submission_detection.json", "submission_tracking.json"):
        assert (tmp_path / "seq" / name).read_bytes() == (tmp_path / "par" / name).read_bytes(), name
    seq = json.loads((tmp_path / "seq" / "metrics.json").read_text())
    par = json.loads((tmp_path / "par" / "metrics.json").read_text())
    assert seq["metrics"]["NDS"] > 0.0  # the model finds something: the comparison means something
    assert seq["metrics"] == par["metrics"]
    assert par["run"]["mode"].endswith("2 jobs") and "2 shards" in par["run"]["model"]


def test_a_failed_shard_fails_the_run_and_names_its_log(root, tmp_path, capsys):
    broken = tmp_path / "root"
    shutil.copytree(root, broken)
    # the second scene loses one camera image: only the shard that holds it can fail
    scene = json.loads(next(broken.glob("v1.0-*/scene.json")).read_text())[1]["name"]
    victim = sorted((broken / "samples" / "CAM_FRONT").glob(f"{scene}__*"))[3]
    victim.unlink()
    out = tmp_path / "report"
    assert _eval(broken, out, 2) == 2
    err = capsys.readouterr().err
    log = tmp_path / "report.shard-1.log"
    assert "shard 1 failed" in err and str(log) in err
    assert log.is_file() and victim.name in log.read_text()
    assert not out.exists() and not list(tmp_path.glob("report.partial-*"))
