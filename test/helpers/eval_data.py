"""Tiny synthetic evaluation data for the eval tests (2 scenes x 8 keyframes, 160x90 images) and their scoring.

Made with our own generator (``sparse_perception_ros.data``), once per test session and module,
as a nuScenes-format root plus (on request) one bag per scene.
"""

from __future__ import annotations

from pathlib import Path

from sparse_perception_ros.eval import devkit

SCENES, KEYFRAMES = 2, 8


def synth_config(sweeps: bool = False, **overrides):
    """The small set's :class:`SynthConfig`; ``overrides`` change fields (e.g. ``objects=60`` for a dense set)."""
    from dataclasses import replace

    from sparse_perception_ros.data.generator import SynthConfig

    config = SynthConfig(seed=3, scenes=SCENES, keyframes=KEYFRAMES, width=160, height=90, beams=8, azimuth_steps=180,
                         objects=12, sweeps=sweeps)
    return replace(config, **overrides)


def make_dataset(folder: Path, bags: bool = False, sweeps: bool = False, **overrides) -> tuple[Path, Path | None]:
    """``(dataroot, bag folder or None)`` under ``folder``; ``overrides``: :func:`synth_config`'s."""
    from sparse_perception_ros.data.synth import synthesize

    root, bag_root = folder / "nuscenes", (folder / "bags" if bags else None)
    synthesize(synth_config(sweeps, **overrides), out=str(root), bag_out=str(bag_root) if bags else None)
    return root, bag_root


# ``score(nusc, samples, results, folder) -> metrics``: the package's devkit scoring, as the scripts use it
score = devkit.score_results
