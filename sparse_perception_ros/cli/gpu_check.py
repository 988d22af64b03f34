"""``python -m sparse_perception_ros.cli.gpu_check`` (what ``scripts/gpu_check.sh`` runs): the prepared GPU check.

Flags only; the check is :func:`sparse_perception_ros.runtime.gpu_check.run_checks` (its module docstring
lists the parts). Not a ``sparse-perception`` subcommand: it runs on the lent GPU machine, without ROS.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    from sparse_perception_ros.runtime import gpu_check  # lazy: keeps the CLI package quick to import

    ap = argparse.ArgumentParser(prog="gpu_check", description=gpu_check.__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out", help="folder for gpu_check.json/.md")
    ap.add_argument("--cpu-smoke", action="store_true", help="small sizes on the CPU, GPU-only parts skipped")
    ap.add_argument("--with-compile", action="store_true", help="with --cpu-smoke: include torch.compile (slow)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="overall time budget in seconds (default 420)")
    ap.add_argument("--frames", type=int, default=None, help="frames per step variant (default 30; smoke 3)")
    ap.add_argument("--presets", default=None, help="comma-separated presets (default tiny,sparse4dv3_r50; smoke tiny)")
    args = ap.parse_args(argv)
    return gpu_check.run_checks(args.out, args.cpu_smoke, args.with_compile, args.budget_s, args.frames, args.presets)


if __name__ == "__main__":
    sys.exit(main())
