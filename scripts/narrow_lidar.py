#!/usr/bin/env python3
"""Starting weights for a narrower LiDAR trunk, made from a wider trained fused model.

A fused preset's LiDAR branch costs most of its time in the per-point pillar MLP and the BEV trunk
(bench/bench_lidar_widths.py). Training a narrower trunk from scratch would throw away what the
wide one learned, so this script prunes it instead (structured channel pruning), then fine-tuning
(``train --init OUT --lidar-channels P,B``) recovers the accuracy:

1. run the wide branch on ``--sweeps`` sweeps of a training data cache and record, for every
   hidden channel of the pillar MLP and the BEV trunk, its mean activation after the ReLU;
2. keep in each layer the ``P`` (pillar MLP) or ``B`` (BEV trunk) channels with the largest
   importance = mean activation x L2 norm of the weights that read the channel in the next layer
   (the pillar count channel ``log1p(count)`` is always kept), and slice every weight, bias and
   BatchNorm entry to them;
3. recompute the pruned layers' BatchNorm statistics on the same sweeps (their inputs lost the
   dropped channels);
4. fit the new 1x1 convolution from the ``B`` trunk channels up to the head's E by least squares
   against the wide trunk's output on those sweeps (its BatchNorm set so that it passes the fit
   through in eval and in train mode);
5. distill (``--distill-steps``): train the narrow pillar MLP and trunk, heads frozen, to reproduce
   the wide trunk's BEV features and heat-map logits sweep by sweep, so the heat map, box and
   candidate layers, which are copied unchanged, see close to the features they were trained on.
   Pruning and the fit alone leave the trunk's output 0.6 away (relative error) and the heat-map
   peaks gone; a fine-tune from there lost 0.18 validation mAP in its first 1000 iterations.

Everything outside ``pts_branch.pillars`` and ``pts_branch.bev_net`` is copied as it is.

Example (issue 21; the fine-tune's commands are in scripts/train_bundled.sh)::

    python scripts/narrow_lidar.py models/tiny_fusion.pt runs/bundled/tiny_fusion_p16b32_init.pt \
        --preset tiny_fusion --pillar 16 --bev 32 --data-cache runs/train_s1_16_o50_sw5.pt
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sparse_perception_ros.model.build import build_model  # noqa: E402
from sparse_perception_ros.model.checkpoint import load_matching, read_checkpoint  # noqa: E402
from sparse_perception_ros.model.config import get_preset  # noqa: E402
from sparse_perception_ros.model.lidar import pad_points  # noqa: E402
from sparse_perception_ros.train.dataset import load_samples  # noqa: E402
from sparse_perception_ros.train.lidar_losses import lidar_distillation  # noqa: E402
from sparse_perception_ros.train.trainer import lidar_samples, recalibrate_lidar_bn  # noqa: E402


@torch.no_grad()
def _activations(branch, sweeps) -> dict[str, torch.Tensor]:
    """Mean post-ReLU activation per channel: pillar MLP hidden and output (over points that fall in a
    cell), and each BEV trunk stage (over the grid)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name, per_point):
        def f(_m, _i, out):
            x = out.reshape(-1, out.shape[-1]) if per_point else out.transpose(0, 1).reshape(out.shape[1], -1).T
            sums[name] = sums.get(name, 0) + x.abs().sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        return f

    mlp, bev = branch.pillars.mlp, branch.bev_net
    handles = [mlp[1].register_forward_hook(hook("mlp1", True)), mlp[3].register_forward_hook(hook("mlp3", True))]
    handles += [bev[i].register_forward_hook(hook(f"bev{i}", False)) for i in (2, 5, 8)]
    for pts in sweeps:
        branch(pts, torch.tensor([pts.shape[1]]))
    for h in handles:
        h.remove()
    return {k: sums[k] / counts[k] for k in sums}


def _keep(act: torch.Tensor, reader_weight: torch.Tensor, n: int) -> torch.Tensor:
    """Indices (sorted) of the ``n`` channels with the largest activation x outgoing weight norm;
    ``reader_weight`` has the channel on dim 1 (Linear [out, in] or Conv [out, in, k, k])."""
    out_norm = reader_weight.transpose(0, 1).reshape(reader_weight.shape[1], -1).norm(dim=1)
    return torch.topk(act * out_norm, n).indices.sort().values


def narrow(wide_sd: dict, preset: str, pillar: int, bev: int, samples, num_sweeps: int = 64,
           seed: int = 0, distill_steps: int = 0, wide_pillar: int = 32) -> tuple[dict, dict]:
    """``(state dict of the preset with LidarConfig(pillar_channels=pillar, bev_channels=bev), report)``
    from ``wide_sd``, weights of the preset with ``wide_pillar`` pillar channels and a BEV trunk of the
    head's E channels."""
    cfg = get_preset(preset)
    if cfg.lidar is None:
        raise SystemExit(f"{preset} has no LiDAR branch")
    if cfg.lidar.bev_stride != 2:
        raise SystemExit("this script prunes a stride-2 trunk (the tiny_fusion layout)")
    # the wide model: the preset with a trunk of E channels and wide_pillar pillar channels (v3's layout)
    cfg = replace(cfg, lidar=replace(cfg.lidar, pillar_channels=wide_pillar, bev_channels=None))
    wide = build_model(cfg).eval()
    load_matching(wide, wide_sd)
    ncfg = replace(cfg, lidar=replace(cfg.lidar, pillar_channels=pillar, bev_channels=bev))
    thin = build_model(ncfg).eval()
    # the sweeps of the statistics and the fit: the seeded choice recalibrate_lidar_bn makes too
    sweeps = [torch.from_numpy(np.asarray(s.points, np.float32))[None] for s in lidar_samples(samples, num_sweeps, seed)]
    wb = wide.pts_branch
    act = _activations(wb, sweeps)
    W = {k[len("pts_branch."):]: v for k, v in wide.state_dict().items() if k.startswith("pts_branch.")}
    c, e = cfg.lidar.pillar_channels, wb.embed_dims
    if pillar > c or bev > e:
        raise SystemExit(f"--pillar {pillar} / --bev {bev} must not exceed the wide model's {c} / {e}")
    h1 = _keep(act["mlp1"], W["pillars.mlp.2.weight"], pillar)
    h2 = _keep(act["mlp3"], W["bev_net.0.weight"][:, :c], pillar)
    h2c = torch.cat([h2, torch.tensor([c])])  # plus the log1p(count) channel
    b0 = _keep(act["bev2"], W["bev_net.3.weight"], pillar)
    b1 = _keep(act["bev5"], W["bev_net.6.weight"], bev)
    b2 = _keep(act["bev8"], W["heatmap.weight"], bev)  # the old trunk's output channels the heads read

    def bn(prefix, idx):
        return {f"{prefix}.{k}": W[f"{prefix}.{k}"][idx] for k in ("weight", "bias", "running_mean", "running_var")} | {
            f"{prefix}.num_batches_tracked": W[f"{prefix}.num_batches_tracked"]}

    new = {
        "pillars.mlp.0.weight": W["pillars.mlp.0.weight"][h1], "pillars.mlp.0.bias": W["pillars.mlp.0.bias"][h1],
        "pillars.mlp.2.weight": W["pillars.mlp.2.weight"][h2][:, h1], "pillars.mlp.2.bias": W["pillars.mlp.2.bias"][h2],
        "bev_net.0.weight": W["bev_net.0.weight"][b0][:, h2c], **bn("bev_net.1", b0),
        "bev_net.3.weight": W["bev_net.3.weight"][b1][:, b0], **bn("bev_net.4", b1),
        "bev_net.6.weight": W["bev_net.6.weight"][b2][:, b1], **bn("bev_net.7", b2),
    }
    sd = {k: v for k, v in wide.state_dict().items()
          if not k.startswith(("pts_branch.pillars.", "pts_branch.bev_net."))}
    sd |= {f"pts_branch.{k}": v.clone() for k, v in new.items()}
    full = bev == e  # the trunk keeps the head's E channels: no 1x1 up to E to fit
    if not full:  # the 1x1 up to E and its BN keep their fresh values until the fit below sets them all
        sd |= {k: v for k, v in thin.state_dict().items()
               if k.startswith(("pts_branch.bev_net.9.", "pts_branch.bev_net.10."))}
    load_matching(thin, sd)
    # 3. the pruned BN statistics, then 4. the 1x1 by least squares against the wide trunk's output
    recalibrate_lidar_bn(thin, samples, num=num_sweeps, seed=seed)
    thin.eval()
    xs, ys = [], []
    trunk = thin.pts_branch.bev_net if full else thin.pts_branch.bev_net[:9]
    with torch.no_grad():
        for pts in sweeps:
            p = pad_points(pts, cfg.lidar.point_dims)
            n = torch.tensor([pts.shape[1]])
            xs.append(trunk(thin.pts_branch.pillars(p, n)).flatten(2)[0].T)
            ys.append(wb.bev_net(wb.pillars(p, n)).flatten(2)[0].T)
    x, y = torch.cat(xs).double(), torch.cat(ys).double()
    errors = {}
    if full:
        errors["pruned"] = float((x - y).norm() / y.norm())
    else:
        # the identity on the kept channels is the fit's baseline in the report
        up = torch.zeros(e, bev, dtype=x.dtype)
        up[b2, torch.arange(bev)] = 1.0
        errors["identity_1x1"] = float((torch.relu(x @ up.T) - y).norm() / y.norm())
        xa = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
        sol = torch.linalg.lstsq(xa, y, driver="gelsd").solution  # [bev + 1, e]
        # BN(z) = z + b in eval mode *and* in train mode (where it normalises by the batch's statistics,
        # which the fit's data stand for): running mean/var = those of z = W x, gamma = its std, beta =
        # its mean + the intercept. A BN left at the identity would rescale z to unit variance as soon
        # as training (or a BN recalibration) recomputes its statistics.
        z = x @ sol[:bev]
        mean, var = z.mean(0), z.var(0, unbiased=False)
        bn10 = thin.pts_branch.bev_net[10]
        thin.pts_branch.bev_net[9].weight.data.copy_(sol[:bev].T.float()[:, :, None, None])
        bn10.running_mean.copy_(mean.float())
        bn10.running_var.copy_(var.float())
        bn10.weight.data.copy_(torch.sqrt(var + bn10.eps).float())
        bn10.bias.data.copy_((mean + sol[bev]).float())
        errors["least_squares_1x1"] = float((torch.relu(xa @ sol) - y).norm() / y.norm())
    if distill_steps:
        errors["distilled"] = distill(thin.pts_branch, wb, samples, distill_steps, seed, cfg.lidar.point_dims)
        recalibrate_lidar_bn(thin, samples, num=num_sweeps, seed=seed)
        thin.eval()
    report = {"sweeps": len(sweeps), "kept": {"mlp_hidden": h1.tolist(), "mlp_out": h2.tolist(),
              "bev0": b0.tolist(), "bev1": b1.tolist(), "bev2": b2.tolist()},
              "relative_error_of_trunk_output": errors}
    return thin.state_dict(), report


def distill(thin, wide, samples, steps: int, seed: int, point_dims: int, lr: float = 1e-3) -> float:
    """Train the narrow branch's pillar MLP and BEV trunk (the heads stay the wide model's, frozen) to
    reproduce the wide trunk's BEV features, heat-map logits (weighted up where the wide heat map
    fires) and box regression (weighted by it) on training sweeps (:func:`lidar_distillation`): ``steps`` Adam
    steps, one sweep each (seeded order; clouds thinned to the preset's ``max_points`` as the node
    does), BatchNorm in train mode as in the fine-tune that follows (its running statistics are
    recomputed afterwards). Returns the relative error of the trunk's output over the last 50 steps."""
    from sparse_perception_ros.runtime.pipeline import thin_points

    rng = np.random.default_rng(seed + 1)
    with_points = lidar_samples(samples)
    params = list(thin.pillars.parameters()) + list(thin.bev_net.parameters())
    frozen = [p for n, p in thin.named_parameters() if not n.startswith(("pillars.", "bev_net."))]
    for p in frozen:
        p.requires_grad_(False)
    opt = torch.optim.Adam(params, lr=lr)
    thin.train()  # BN normalises by each sweep's statistics, as in training
    wide.eval()
    errs = []
    for step in range(steps):
        pts = np.asarray(with_points[rng.integers(len(with_points))].points, np.float32)
        if len(pts) > thin.cfg.max_points:
            pts = thin_points(pts, thin.cfg.max_points)
        p = pad_points(torch.from_numpy(pts)[None], point_dims)
        n = torch.tensor([p.shape[1]])
        with torch.no_grad():
            bw, hw, rw = wide.bev_maps(wide.pillars(p, n))
        bn, hn, rn = thin.bev_maps(thin.pillars(p, n))
        loss = lidar_distillation((bn, hn, rn), (bw, hw, rw))
        opt.zero_grad()
        loss.backward()
        opt.step()
        for g in opt.param_groups:  # cosine decay to zero
            g["lr"] = lr * 0.5 * (1 + np.cos(np.pi * (step + 1) / steps))
        if step >= steps - 50:
            errs.append(float(((bn - bw).norm() / bw.norm()).detach()))
    for p in frozen:
        p.requires_grad_(True)
    thin.eval()
    return float(np.mean(errs))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("wide", help="trained weights of the preset as it is (e.g. models/tiny_fusion.pt)")
    ap.add_argument("out", help="starting weights to write for train --init ... --lidar-channels P,B")
    ap.add_argument("--preset", default="tiny_fusion")
    ap.add_argument("--pillar", type=int, required=True, help="pillar MLP channels of the narrow trunk")
    ap.add_argument("--bev", type=int, required=True, help="BEV trunk channels of the narrow trunk")
    ap.add_argument("--wide-pillar", type=int, default=32,
                    help="pillar channels of the wide weights (their BEV trunk has the head's E channels)")
    ap.add_argument("--data-cache", required=True, help="fused training data cache (train --data-cache)")
    ap.add_argument("--sweeps", type=int, default=64, help="sweeps for the statistics and the fit (seeded choice)")
    ap.add_argument("--distill-steps", type=int, default=4000,
                    help="then train the narrow trunk to reproduce the wide one's BEV features and heat map on this "
                         "many training sweeps (step 5 above; 0 = pruning and the fit only)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    samples, _meta = load_samples(args.data_cache)
    try:
        sd, report = narrow(read_checkpoint(args.wide), args.preset, args.pillar, args.bev, samples, args.sweeps, args.seed,
                            args.distill_steps, args.wide_pillar)
    except ValueError as exc:  # e.g. a camera-only data cache: no sweeps
        print(f"narrow_lidar: {args.data_cache}: {exc}", file=sys.stderr)
        return 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, args.out)
    err = report["relative_error_of_trunk_output"]
    print(f"narrow_lidar: {args.out}: pillar {args.pillar}, BEV {args.bev} channels from {args.wide} "
          f"({report['sweeps']} sweeps); trunk output relative error "
          + ", ".join(f"{v:.3f} {k.replace('_', ' ')}" for k, v in err.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
