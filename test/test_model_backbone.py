"""ResNet + FPN: checkpoint key names, output strides, frozen BN, the full tiny model end to end."""

import numpy as np
import pytest
import torch

from sparse_perception_ros.model import TemporalState, build_model
from sparse_perception_ros.model.backbone import FPN, FrozenBatchNorm2d, ResNet


def test_resnet50_keys_match_torchvision_naming():
    sd = ResNet(50).state_dict()
    assert len(sd) == 318  # torchvision resnet50 without fc.weight / fc.bias
    expected = {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.num_batches_tracked": (),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer2.0.conv2.weight": (128, 128, 3, 3),  # "pytorch" style: stride on the 3x3
        "layer3.5.bn2.running_var": (256,),
        "layer4.2.conv3.weight": (2048, 512, 1, 1),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    neck = FPN([256, 512, 1024, 2048], 256).state_dict()
    assert tuple(neck["lateral_convs.0.conv.weight"].shape) == (256, 256, 1, 1)
    assert tuple(neck["lateral_convs.3.conv.bias"].shape) == (256,)
    assert tuple(neck["fpn_convs.2.conv.weight"].shape) == (256, 256, 3, 3)


@pytest.mark.parametrize("depth, channels", [(18, [64, 128, 256, 512]), (34, [64, 128, 256, 512])])
def test_resnet_output_strides(depth, channels):
    net = ResNet(depth).eval()
    outs = net(torch.zeros(1, 3, 64, 96))
    assert [o.shape[1] for o in outs] == channels == net.out_channels
    assert [tuple(o.shape[2:]) for o in outs] == [(16, 24), (8, 12), (4, 6), (2, 3)]


def test_frozen_batchnorm_matches_eval_batchnorm_and_does_not_update():
    bn = torch.nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    frozen = FrozenBatchNorm2d(4)
    frozen.load_state_dict(bn.state_dict())
    x = torch.randn(2, 4, 5, 5)
    frozen.train()
    torch.testing.assert_close(frozen(x), bn(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(frozen.running_mean, bn.running_mean)


def test_tiny_model_end_to_end():
    torch.manual_seed(0)
    model = build_model("tiny")
    w, h = model.cfg.input_wh
    img = torch.randn(1, 6, 3, h, w)
    feats = model.extract_features(img)
    assert [tuple(f.shape) for f in feats] == [(1, 6, 64, h // s, w // s) for s in (4, 8, 16, 32)]
    proj = torch.eye(4).expand(1, 6, 4, 4).clone()
    proj[..., 0, 0] = proj[..., 1, 1] = w / 2
    wh = torch.tensor([float(w), float(h)]).expand(1, 6, 2)
    out, state = model.step(img, proj, wh, 0.0, np.eye(4), TemporalState.empty())
    assert out.boxes.shape == (model.cfg.head.num_output, 10) and torch.isfinite(out.boxes).all()
    assert state.next_track_id == model.cfg.head.num_anchor
