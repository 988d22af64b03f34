"""The TensorRT plugin's own logic, run against a stand-in for ``tensorrt.plugin``.

TensorRT cannot be installed here, so this checks what our code does with the documented API
(descriptor shape, AOT kernel name / PTX / launch grid / scalar arguments) using minimal fakes
of the objects that API passes. It does not prove TensorRT accepts them: that needs a GPU
machine (``test_backends_parity.py::test_tensorrt_*``, skipped here).
"""

import importlib
import re
import sys
import types

import pytest

from sparse_perception_ros.ops.dfa_triton import KERNEL_NAME, triton_available


class Expr:
    """Stand-in for ``tensorrt.plugin.ShapeExpr``: a constant with symbolic-looking arithmetic."""

    def __init__(self, value):
        self.value = value
        self.is_constant = True
        self.constant_value = value

    def __mul__(self, other):
        return Expr(self.value * (other.value if isinstance(other, Expr) else other))


class Desc:
    def __init__(self, shape, dtype):
        self.shape_expr = [Expr(d) for d in shape]
        self.dtype = dtype


@pytest.fixture()
def fake_trt(monkeypatch):
    registry: dict[str, dict] = {}
    trt = types.ModuleType("tensorrt")
    trt.float32, trt.float16, trt.int64 = "float32", "float16", "int64"
    plugin = types.ModuleType("tensorrt.plugin")

    def decorator(kind):
        def outer(plugin_id):
            def inner(fn):
                registry.setdefault(plugin_id, {})[kind] = fn
                return fn

            return inner

        return outer

    plugin.register, plugin.autotune, plugin.aot_impl = decorator("desc"), decorator("autotune"), decorator("aot")
    plugin.TensorDesc = Desc
    plugin.from_shape_expr = lambda shape, dtype: ("desc", tuple(e.value for e in shape), dtype)
    plugin.AutoTuneCombination = lambda types_, layouts: (types_, layouts)

    class KernelLaunchParams:
        grid_x = grid_y = grid_z = block_x = block_y = block_z = shared_mem = None

    class SymIntExprs(list):
        def __init__(self, n):
            super().__init__([None] * n)

    plugin.KernelLaunchParams = KernelLaunchParams
    plugin.SymIntExprs = SymIntExprs
    plugin.SymInt32 = lambda expr: ("i32", expr.value)
    trt.plugin = plugin
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", plugin)
    import sparse_perception_ros.runtime.tensorrt_plugin as mod

    mod = importlib.reload(mod)  # fresh _registered flag
    monkeypatch.setattr(mod, "_builder_compute_capability", lambda: (9, 0))
    mod.register_dfa_plugin()
    yield registry[mod.PLUGIN_ID]
    importlib.reload(mod)


@pytest.mark.skipif(not triton_available(), reason="triton is not installed (requirements/ml.txt)")
def test_plugin_descriptor_and_aot_kernel(fake_trt):
    bs, cams, levels, groups, pts, anchors, channels = 1, 6, 4, 8, 13, 900, 256
    rows = cams * (64 * 176 + 32 * 88 + 16 * 44 + 8 * 22)
    feat = Desc((bs, rows, channels), "float32")
    shape = Desc((cams, levels, 2), "int64")
    start = Desc((cams, levels), "int64")
    loc = Desc((bs, anchors, pts, cams, 2), "float32")
    weights = Desc((bs, anchors, pts, cams, levels, groups), "float32")
    assert fake_trt["desc"](feat, shape, start, loc, weights) == ("desc", (bs, anchors, channels), "float32")
    (types_, layouts), = fake_trt["autotune"](feat, shape, start, loc, weights, None)
    assert types_.split(", ")[1:3] == ["INT64", "INT64"] and layouts == "LINEAR"
    name, ptx, launch, extra = fake_trt["aot"](feat, shape, start, loc, weights, (None,), 0)
    assert name == KERNEL_NAME and re.search(r"\.target sm_90a?\b", ptx) and f".entry {KERNEL_NAME}(" in ptx
    assert launch.grid_x.value == bs * anchors and launch.grid_y == channels // 128
    assert launch.block_x == 128 and launch.shared_mem == 0
    assert list(extra) == [("i32", rows), ("i32", anchors)]  # the kernel's scalar parameters, in order
