"""Write the image backbone's static int8 ONNX file for weights that are already bundled.

``sparse-perception bundle --int8-backbone`` does it while bundling; this does it for a bundled file
without touching it (``torch.save`` would rewrite its bytes)::

    python scripts/make_int8_backbone.py models/tiny_fusion.pt --preset tiny_fusion --data runs/train_s1_16_o50_sw5.pt

Writes ``<weights>.int8_backbone.onnx`` and the ``int8_backbone`` entry of ``<weights>.json``.
"""

from __future__ import annotations

import argparse

from sparse_perception_ros.model import build_model
from sparse_perception_ros.model.config import get_preset
from sparse_perception_ros.train.bundle import write_int8_backbone
from sparse_perception_ros.train.dataset import load_samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", help="bundled weights, e.g. models/tiny_fusion.pt")
    ap.add_argument("--preset", required=True)
    ap.add_argument("--data", required=True, help="training data cache (train --data-cache) to calibrate on")
    args = ap.parse_args()
    model = build_model(get_preset(args.preset))
    model.load_official_checkpoint(args.weights)
    out = write_int8_backbone(model.eval(), args.weights, load_samples(args.data)[0], data=args.data)
    print(f"wrote {out} and the int8_backbone entry of {args.weights}.json")


if __name__ == "__main__":
    main()
