"""Issue 21: the image backbone once per image, apart from the step (runtime/features.py).

The split must not change what the node publishes: per-camera features equal the batched
backbone's within float rounding, and a pipeline whose features come from the cache (filled as
images arrive, or computed in the step) publishes the same boxes, scores and ids as the one graph.
"""

import dataclasses

import numpy as np
import pytest
import torch
from helpers.frames import make_frame
from helpers.pipeline import clear_ranks, pipeline_config

from sparse_perception_ros.model import CLASS_NAMES
from sparse_perception_ros.params import ParameterError, load_params
from sparse_perception_ros.runtime.features import FeatureCache
from sparse_perception_ros.runtime.loading import load_model
from sparse_perception_ros.runtime.pipeline import Pipeline, PipelineState

BASE = load_params().model
T0, S = 1_700_000_000_000_000_000, 1_000_000_000


def with_(**kw):
    kw.setdefault("lidar_precision", "fp32")  # same numbers as the one graph; bf16 is tested in test_runtime_lidar_features
    return dataclasses.replace(BASE, **kw)


def frames(n, lidar: bool, new_images_every: int = 2):
    """A drive where the cameras (stamped apart) change only every ``new_images_every`` frames, as
    12 Hz cameras under 20 Hz sweeps; a sweep per frame when ``lidar``."""
    out = []
    for k in range(n):
        shot = k // new_images_every
        f = make_frame(T0 + k * S // 20, seed=shot, pose_x=0.1 * k)
        f.camera_stamps_ns = np.full(6, T0 + shot * S // 12 + 1000, np.int64) + np.arange(6)
        if lidar:
            rng = np.random.default_rng(k)
            f.points = np.c_[rng.uniform(-30, 30, (3000, 2)), rng.uniform(-2, 1, 3000),
                             rng.uniform(0, 100, 3000)].astype(np.float32)
        out.append(f)
    return out


def run(pipe: Pipeline, fs, arrive: bool):
    state, dets = PipelineState.empty(), []
    for f in fs:
        if arrive:  # what the node's image callbacks do before the frame is delivered
            for c, im in enumerate(f.images):
                pipe.add_image(c, int(f.camera_stamps_ns[c]), im)
            assert pipe.features.wait(timeout=30)  # the images came before their trigger
        det, state = pipe.step(f, state)
        dets.append(det)
    return dets


def test_per_camera_features_match_the_batched_backbone():
    full = load_model(with_(backend="torch", image_features="in_step")).stepper.backend.graph.backbone
    img = torch.randn(1, 6, 3, *reversed(full.cfg.input_wh))
    batched = full.extract_features(img)
    single = [torch.cat(maps) for maps in zip(*(full.camera_features(img[0, c:c + 1]) for c in range(6)),
                                                strict=True)]
    for b, s in zip(batched, single, strict=True):
        torch.testing.assert_close(s[None], b, atol=1e-4, rtol=0)  # float rounding of another batch size


@pytest.mark.parametrize("preset,backend", [("tiny_fusion", "torch"), ("tiny_fusion", "onnxruntime"),
                                            ("tiny", "torch")])
def test_split_pipeline_publishes_what_the_one_graph_does(preset, backend):
    one = load_model(with_(preset=preset, backend=backend, image_features="in_step")).stepper
    # fp32: the bundled fused weights carry an int8 backbone, which model.image_precision auto would run
    split = load_model(with_(preset=preset, backend=backend, image_features="on_arrival",
                             image_precision="fp32")).stepper
    assert split.camera_backbone is not None and one.camera_backbone is None
    assert split.with_backbone and not split.backend.with_backbone  # takes images; its graph takes features
    assert split.backend.name == backend and split.camera_backbone.name == "onnxruntime"  # the faster backbone
    fs = frames(6, lidar=preset == "tiny_fusion")
    ref = run(Pipeline(one, CLASS_NAMES, pipeline_config(max_detections=32)), fs, arrive=False)
    pipe = Pipeline(split, CLASS_NAMES, pipeline_config(max_detections=32))
    got = run(pipe, fs, arrive=True)
    # every image computed once on arrival (on the cache's thread); the step found all of them there
    assert pipe.features.misses == 0 and pipe.features.hits == 6 * len(fs)
    for k, (r, g) in enumerate(zip(ref, got, strict=True)):
        assert len(r.scores) == len(g.scores) > 0, f"frame {k}"
        assert g.counters["image_features_in_step"] == 0 and "image_features_in_step" not in r.counters
        np.testing.assert_allclose(g.scores, r.scores, atol=1e-3, rtol=0, err_msg=f"frame {k}")
        clear = clear_ranks(r.scores, 1e-4)  # ranks not within 1e-4 of a neighbour (near ties may swap)
        np.testing.assert_array_equal(g.track_ids[clear], r.track_ids[clear], err_msg=f"frame {k}")
        np.testing.assert_allclose(g.boxes[clear], r.boxes[clear], atol=2e-3, rtol=0, err_msg=f"frame {k}")


def test_cache_computes_what_is_missing_and_masks_with_a_blank_image():
    loaded = load_model(with_(image_features="on_arrival"))
    cache = FeatureCache(loaded.stepper.camera_backbone, 6, loaded.stepper.cfg.input_wh, keep=2)
    f = frames(1, lidar=False)[0]
    present = np.array([1, 1, 1, 0, 1, 1], bool)
    cache.add(0, int(f.camera_stamps_ns[0]), f.images[0])
    maps = cache.features(f.images, f.camera_stamps_ns, present)
    assert (cache.hits, cache.misses) == (2, 4)  # camera 0 cached + camera 3 masked; four computed now
    again = cache.features(f.images, f.camera_stamps_ns, present)
    assert (cache.hits, cache.misses) == (8, 4)  # the four are remembered
    assert torch.equal(maps, again)
    per_cam = maps.reshape(6, -1, maps.shape[-1])  # mc_ms_feat [1, 6 * L, E]: one camera's rows after another
    blank = cache._blank_maps()[0]  # [L, E]
    assert blank.shape == per_cam.shape[1:]
    assert torch.equal(per_cam[3], blank) and not torch.equal(per_cam[2], blank)
    for k in range(3):  # keep=2: the oldest of camera 0 is forgotten
        cache.add(0, 10 + k, f.images[0])
    cache.features(f.images, f.camera_stamps_ns, present)
    assert cache.misses == 5
    unknown = f.camera_stamps_ns.copy()
    unknown[:] = -1  # no stamps: never cached
    cache.features(f.images, unknown, present)
    assert cache.misses == 10


def test_image_state_tells_ready_from_waiting_behind_others():
    """What the frame assembler asks under load (sync.prefer_ready_images): an image being computed or
    cached is ready; one queued behind two or more others is behind; the next in line is not."""
    import threading

    loaded = load_model(with_(image_features="on_arrival"))
    cache = FeatureCache(loaded.stepper.camera_backbone, 6, loaded.stepper.cfg.input_wh)
    gate, started = threading.Event(), threading.Event()
    run = cache.backbone.run
    cache.backbone.run = lambda img: (started.set(), gate.wait(30), run(img))[2]
    image = frames(1, lidar=False)[0].images[0]
    cache.submit(0, 100, image)
    assert started.wait(30)  # the thread is computing camera 0's image now
    cache.submit(1, 200, image)
    cache.submit(2, 300, image)
    assert cache.image_state(0, 100) == "ready"
    assert cache.image_state(1, 200) == "unknown"  # next in line (one ahead of it)
    assert cache.image_state(2, 300) == "behind"  # the busy image and camera 1's are ahead
    assert cache.image_state(3, 100) == "unknown" and cache.image_state(2, 299) == "unknown"
    gate.set()
    assert cache.wait(timeout=60)
    assert all(cache.image_state(c, t) == "ready" for c, t in ((0, 100), (1, 200), (2, 300)))
    cache.close()


def test_submitted_images_are_computed_on_the_thread_and_never_twice():
    loaded = load_model(with_(image_features="on_arrival"))
    cache = FeatureCache(loaded.stepper.camera_backbone, 6, loaded.stepper.cfg.input_wh)
    calls = []
    run = cache.backbone.run
    cache.backbone.run = lambda img: calls.append(len(img)) or run(img)
    fs = frames(3, lidar=False, new_images_every=1)
    for c, im in enumerate(fs[0].images):  # a burst: all six, then the step arrives at once
        cache.submit(c, int(fs[0].camera_stamps_ns[c]), im)
    cache.features(fs[0].images, fs[0].camera_stamps_ns, np.ones(6, bool))
    assert cache.wait(timeout=30)
    assert sum(calls) == 6  # each image once: on the thread, or in the step's batch, never both
    for f in fs[1:]:  # a newer image of a camera replaces its older one still waiting
        for c, im in enumerate(f.images):
            cache.submit(c, int(f.camera_stamps_ns[c]), im)
    assert cache.wait(timeout=30) and 6 + 6 <= sum(calls) <= 6 + 12
    cache.close()
    cache.submit(0, 1, fs[0].images[0])  # ignored after close
    assert cache.wait(timeout=1) and not cache._queued


def test_a_burst_is_shared_between_the_step_and_the_thread():
    """The stream start: six images and their frame at once. The step computes the images still waiting
    in the thread's line while the thread goes on with its own, so both cores work and none twice."""
    import threading
    import time

    loaded = load_model(with_(image_features="on_arrival"))
    cache = FeatureCache(loaded.stepper.camera_backbone, 6, loaded.stepper.cfg.input_wh)
    who, spent = [], []
    run = cache.backbone.run

    def slow(img):  # 40 ms more an image, so both threads are seen to work whatever the host's speed
        t = time.perf_counter()
        time.sleep(0.04)
        who.append(threading.current_thread().name)
        out = run(img)
        spent.append(time.perf_counter() - t)
        return out

    cache.backbone.run = slow
    f = frames(1, lidar=False)[0]
    for c, im in enumerate(f.images):
        cache.submit(c, int(f.camera_stamps_ns[c]), im)
    t0 = time.perf_counter()
    maps = cache.features(f.images, f.camera_stamps_ns, np.ones(6, bool))
    elapsed = time.perf_counter() - t0
    assert len(who) == 6  # each image once
    here, thread = who.count(threading.current_thread().name), who.count("image_features")
    assert here >= 2 and thread >= 2, who
    # not one after another on one thread: that takes the sum of the six images' times (each >= 40 ms);
    # two threads sharing them take about half. Relative to the times measured here, so a loaded host
    # (slower backbone runs) cannot fail it; the bound leaves a fifth of the sum for the overlap's slack
    assert elapsed < 0.8 * sum(spent), (elapsed, spent)
    cache.backbone.run = run
    alone = FeatureCache(loaded.stepper.camera_backbone, 6, loaded.stepper.cfg.input_wh)
    assert torch.allclose(maps, alone.features(f.images, f.camera_stamps_ns, np.ones(6, bool)), atol=1e-5)
    cache.close()


def test_image_features_parameter():
    assert load_model(BASE).stepper.camera_backbone is not None  # auto on CPU: on arrival
    assert load_model(with_(compile=True)).stepper.camera_backbone is None  # auto: the whole step compiled
    with pytest.raises(ParameterError) as err:
        load_model(with_(image_features="on_arrival", compile=True))
    assert err.value.name == "model.image_features"
