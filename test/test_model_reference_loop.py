"""The functional head vs a stateful re-statement of the reference loop (hidden bank attributes).

The test-local ``StatefulBank`` keeps state the way the reference ``InstanceBank`` does
(``cached_*``, ``confidence``, ``temp_confidence``, ``instance_id`` padded to A, ``prev_id``,
``mask``) and ``reference_forward`` follows the reference head's loop. Both share the head's
layers, so any difference comes from the state plumbing: projection, mask, update, cache, ids.
Tolerance: identical arithmetic, so atol 1e-5 on logits/anchors and exact ids.
"""

import numpy as np
import torch

from sparse_perception_ros.model import TemporalState, build_head
from sparse_perception_ros.model.instance_bank import anchor_projection


class StatefulBank:
    def __init__(self, head):
        self.head = head
        self.n_temp = head.cfg.num_temp_instances
        self.n_anchor = head.cfg.num_anchor
        self.cached_feature = self.cached_anchor = self.confidence = None
        self.temp_confidence = self.instance_id = self.mask = None
        self.prev_id = 0
        self.metas = None

    def get(self, metas):
        feat = self.head.instance_bank.instance_feature[None]
        anchor = self.head.instance_bank.anchor[None]
        if self.cached_anchor is not None:
            dt = torch.tensor([metas["timestamp"] - self.metas["timestamp"]], dtype=torch.float64).float()
            self.mask = dt.abs() <= 2.0
            t = torch.tensor(np.linalg.inv(metas["T_global"]) @ self.metas["T_global"], dtype=torch.float32)[None]
            self.cached_anchor = anchor_projection(self.cached_anchor, t, dt)
            ti = torch.where((dt != 0) & self.mask, dt, torch.tensor(0.5))
        else:
            ti = torch.tensor([0.5])
        return feat, anchor, self.cached_feature, self.cached_anchor, ti

    def update(self, feat, anchor, cls):
        if self.cached_feature is None:
            return feat, anchor
        idx = cls.max(-1).values.topk(self.n_anchor - self.n_temp, dim=1).indices[0]
        sel_f = torch.cat([self.cached_feature, feat[:, idx]], dim=1)
        sel_a = torch.cat([self.cached_anchor, anchor[:, idx]], dim=1)
        feat = torch.where(self.mask[:, None, None], sel_f, feat)
        anchor = torch.where(self.mask[:, None, None], sel_a, anchor)
        if self.instance_id is not None:
            self.instance_id = torch.where(self.mask[:, None], self.instance_id, torch.tensor(-1))
        return feat, anchor

    def cache(self, feat, anchor, cls, metas):
        self.metas = metas
        conf = cls.max(-1).values.sigmoid()
        if self.confidence is not None:
            conf[:, : self.n_temp] = torch.maximum(self.confidence * 0.6, conf[:, : self.n_temp])
        self.temp_confidence = conf
        self.confidence, idx = conf.topk(self.n_temp, dim=1)
        self.cached_feature, self.cached_anchor = feat[:, idx[0]], anchor[:, idx[0]]

    def get_instance_id(self, cls):
        ids = torch.full(cls.shape[:2], -1, dtype=torch.int64)
        if self.instance_id is not None:
            ids[:, : self.instance_id.shape[1]] = self.instance_id
        new = ids < 0
        ids[new] = torch.arange(int(new.sum())) + self.prev_id
        self.prev_id += int(new.sum())
        order = self.temp_confidence.topk(self.n_temp, dim=1).indices[0]
        self.instance_id = torch.nn.functional.pad(ids[:, order], (0, self.n_anchor - self.n_temp), value=-1)
        return ids


def reference_forward(head, bank, maps, proj, wh, metas):
    from sparse_perception_ros.model.dfa import FeatureInputs

    def graph(i, q, q_pos, k=None, k_pos=None, v=None):
        q = torch.cat([q, q_pos], -1)
        k = torch.cat([k, k_pos], -1) if k is not None else q
        v = head.fc_before(v) if v is not None else k
        return head.fc_after(q + head.layers[i].attn(q, k, v))

    feat, anchor, t_feat, t_anchor, ti = bank.get(metas)
    embed = head.anchor_encoder(anchor)
    t_embed = head.anchor_encoder(t_anchor) if t_anchor is not None else None
    preds = []
    fi = FeatureInputs(maps)
    order = head.operation_order
    for i, op in enumerate(order):
        if op == "temp_gnn":
            feat = graph(i, feat, embed, t_feat, t_embed, t_feat)
        elif op == "gnn":
            feat = graph(i, feat, embed, v=feat)
        elif op in ("norm", "ffn"):
            feat = head.layers[i](feat)
        elif op == "deformable":
            feat = head.layers[i](feat, anchor, embed, fi, proj, wh)
        else:
            anchor, cls, qt = head.layers[i](feat, anchor, embed, ti, True)
            preds.append(anchor)
            if len(preds) == 1:
                feat, anchor = bank.update(feat, anchor, cls)
            if i != len(order) - 1:
                embed = head.anchor_encoder(anchor)
            if len(preds) > 1 and t_embed is not None:
                t_embed = embed[:, : bank.n_temp]
    bank.cache(feat, anchor, cls, metas)
    return cls, anchor, qt, bank.get_instance_id(cls)


def test_functional_state_matches_the_stateful_reference_loop():
    torch.manual_seed(0)
    head = build_head("tiny")
    gen = torch.Generator().manual_seed(0)
    cams = 6
    proj = torch.zeros(1, cams, 4, 4)
    for c in range(cams):
        th = 2 * np.pi * c / cams + np.pi / 2
        r = np.array([[np.sin(th), -np.cos(th), 0], [0, 0, -1], [np.cos(th), np.sin(th), 0]])
        k = np.array([[44.0, 0, 44.0], [0, 44.0, 16.0], [0, 0, 1]])
        proj[0, c, :3, :3] = torch.tensor(k @ r, dtype=torch.float32)
        proj[0, c, 3, 3] = 1.0
    wh = torch.tensor([88.0, 32.0]).expand(1, cams, 2)
    t0 = 1_533_151_603.25
    # (dt from start, ego x position): normal, dt = 0, backwards 0.3 s, gap 3 s, normal
    schedule = [(0.0, 0.0), (0.5, 1.0), (0.5, 1.0), (0.2, 0.5), (3.2, 4.0), (3.7, 5.0)]
    bank = StatefulBank(head)
    state = TemporalState.empty()
    with torch.no_grad():
        for step, (dt, x) in enumerate(schedule):
            maps = [torch.randn(1, cams, 64, h, w, generator=gen) for h, w in [(8, 22), (4, 11), (2, 6), (1, 3)]]
            pose = np.eye(4)
            pose[:3, 3] = [x, 0.3 * x, 0.0]
            c, s = np.cos(0.1 * x), np.sin(0.1 * x)
            pose[:2, :2] = [[c, -s], [s, c]]
            metas = {"timestamp": t0 + dt, "T_global": pose}
            cls, anchor, qt, ids = reference_forward(head, bank, maps, proj, wh, metas)
            out, state = head.step(maps, proj, wh, t0 + dt, pose, state)
            torch.testing.assert_close(out.classification, cls[0], atol=1e-5, rtol=1e-5, msg=f"step {step}")
            torch.testing.assert_close(out.prediction, anchor[0], atol=1e-5, rtol=1e-5, msg=f"step {step}")
            torch.testing.assert_close(out.quality, qt[0], atol=1e-5, rtol=1e-5)
            assert state.next_track_id == bank.prev_id
            assert torch.equal(state.track_ids, bank.instance_id[:, : bank.n_temp]), f"step {step}"
            torch.testing.assert_close(state.anchors, bank.cached_anchor, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(state.confidence, bank.confidence)
            prob = cls[0].sigmoid().max(-1).values
            top = prob.topk(head.cfg.num_output).indices
            final = top[torch.sort(prob[top] * qt[0, top, 0].sigmoid(), descending=True).indices]
            assert torch.equal(out.instance_ids, ids[0, final])
    n_anchor, n_new = head.cfg.num_anchor, head.cfg.num_anchor - head.cfg.num_temp_instances
    assert bank.prev_id == n_anchor + n_new * 3 + n_anchor + n_new  # gap at step 4 renumbers all instances
