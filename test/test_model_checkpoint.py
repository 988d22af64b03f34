"""Checkpoint loading: released key layout, prefixes, wrappers, foreign files, unsafe pickles."""

import builtins
import json
import pickle
from pathlib import Path

import pytest
import torch

from sparse_perception_ros.model import CheckpointError, build_head, build_model

KEYS_JSON = Path(__file__).parent / "data" / "sparse4dv3_r50_state_dict_keys.json"


def released_head_state_dict(prefix: str = "") -> dict[str, torch.Tensor]:
    """Random tensors with every key and shape of the released head (from the keys JSON)."""
    spec = json.loads(KEYS_JSON.read_text())
    gen = torch.Generator().manual_seed(0)
    return {prefix + k["key"]: torch.randn(k["shape"], generator=gen) for k in spec["keys"]}


@pytest.fixture(scope="module")
def r50_head():
    return build_head("sparse4dv3_r50")


@pytest.mark.parametrize("prefix", ["", "head."])
def test_released_head_keys_load_with_zero_missing_or_unexpected(r50_head, prefix):
    sd = released_head_state_dict(prefix)
    assert len(sd) == json.loads(KEYS_JSON.read_text())["num_keys"] == 479
    report = r50_head.load_official_state_dict(sd)
    assert report.missing == [] and report.unexpected == [] and len(report.loaded) == 479
    own = r50_head.state_dict()
    for key in ("instance_bank.anchor", "layers.35.kps_generator.fix_scale", "fc_before.weight",
                "layers.38.layers.11.scale", "layers.4.attn.in_proj_weight"):
        torch.testing.assert_close(own[key], sd[prefix + key], rtol=0, atol=0)
    assert sum(v.numel() for v in own.values()) == 21303045


def test_full_model_dict_keeps_only_head_keys(r50_head):
    sd = released_head_state_dict("head.")
    sd["img_backbone.conv1.weight"] = torch.zeros(64, 3, 7, 7)
    report = r50_head.load_official_state_dict(sd)
    assert report.ok and len(report.loaded) == 479


def test_missing_and_unexpected_keys_are_named(r50_head):
    sd = released_head_state_dict()
    del sd["layers.7.weights_fc.bias"]
    sd["layers.7.extra.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as err:
        r50_head.load_official_state_dict(sd)
    assert "layers.7.weights_fc.bias" in str(err.value) and "layers.7.extra.weight" in str(err.value)
    report = r50_head.load_official_state_dict(sd, strict=False)
    assert report.missing == ["layers.7.weights_fc.bias"] and report.unexpected == ["layers.7.extra.weight"]


def test_wrong_shape_and_foreign_checkpoints_give_clear_errors():
    tiny = build_head("tiny")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        tiny.load_official_state_dict(released_head_state_dict())
    with pytest.raises(CheckpointError, match="not a Sparse4D"):
        tiny.load_official_state_dict({"backbone.fc.weight": torch.zeros(2, 2)})


def test_full_checkpoint_file_with_state_dict_and_meta_wrapper(tmp_path):
    src = build_model("tiny")
    sd = {k: v + 0.5 for k, v in src.state_dict().items() if v.is_floating_point()}
    sd.update({k: v for k, v in src.state_dict().items() if not v.is_floating_point()})
    sd["depth_branch.depth_layers.0.weight"] = torch.zeros(1)  # training only: ignored
    path = tmp_path / "ckpt.pth"
    torch.save({"meta": {"epoch": 100, "CLASSES": ("car", "truck"), "config": "x = 1"}, "state_dict": sd}, path)
    dst = build_model("tiny")
    report = dst.load_official_checkpoint(path)
    assert report.ok and report.ignored == ["depth_branch.depth_layers.0.weight"]
    torch.testing.assert_close(dst.state_dict()["img_neck.fpn_convs.3.conv.bias"], sd["img_neck.fpn_convs.3.conv.bias"])
    torch.testing.assert_close(dst.state_dict()["head.instance_bank.anchor"], sd["head.instance_bank.anchor"])
    # a bare state dict works too
    torch.save(sd, tmp_path / "bare.pth")
    assert build_model("tiny").load_official_checkpoint(tmp_path / "bare.pth").ok
    # a head-only dict is reported as missing backbone keys by name
    torch.save({k: v for k, v in sd.items() if k.startswith("head.")}, tmp_path / "head_only.pth")
    with pytest.raises(CheckpointError, match="img_backbone.conv1.weight"):
        build_model("tiny").load_official_checkpoint(tmp_path / "head_only.pth")


class _Payload:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


def test_weights_only_refuses_a_malicious_pickle_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"x": _Payload(marker)}}, f, protocol=2)  # plain pickle
    torch.save({"state_dict": {"x": _Payload(marker)}}, tmp_path / "evil_zip.pth")  # torch zip format
    assert not marker.exists()
    model = build_model("tiny")
    for p in (path, tmp_path / "evil_zip.pth"):
        with pytest.raises(CheckpointError, match="weights_only"):
            model.load_official_checkpoint(p)
        assert not marker.exists()
    # sanity: the payload is real (unpickling it unsafely creates the file)
    pickle.loads(pickle.dumps(_Payload(marker))).close()
    assert marker.exists()
