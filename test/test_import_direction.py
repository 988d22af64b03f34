"""Direction of imports: the core rooms never pull in rclpy, the rclpy adapter ``ros/`` or the commands ``cli/``.

The package is a ROS-free core (geometry, ops, model, runtime, data, train, eval) plus a thin
rclpy adapter (``ros/``); the offline tools, training and the tests of the core must work on a
machine without ROS. Two guards:

- ``test_core_imports_without_rclpy``: in a fresh interpreter, a ``sys.meta_path`` finder makes
  ``rclpy`` (and its submodules) and ``sparse_perception_ros.ros`` unimportable and records every
  attempt, even one a module catches; then every module of the core rooms (found by walking the
  package directories, so new modules are covered without editing this file) and
  ``sparse_perception_ros.params`` is imported. Any attempt fails the test with the module that
  was being imported and the chain of modules whose import led to it.
- ``test_core_sources_have_no_deferred_ros_imports``: imports inside functions only run when
  called, so the first guard cannot see them; this one reads the sources (AST) for any
  ``rclpy`` / ``sparse_perception_ros.ros`` import, wherever it is.

``cli/`` is the top room: the commands and the processes the launcher starts; it may import every
room. Nothing below it imports ``cli/`` (the guards block it with ``ros/``), and ``ros/`` does not
import ``cli/`` either (``test_ros_does_not_import_cli``). The ROS-mode evaluation, which starts
the node set through ``ros.launcher``, lives in ``cli/eval_ros.py``, so no exception is needed.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = "sparse_perception_ros"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE
CORE_ROOMS = ("geometry", "ops", "model", "runtime", "data", "train", "eval")
EXTRA_CORE_MODULES = (f"{PACKAGE}.params", f"{PACKAGE}.paths", f"{PACKAGE}.processes", f"{PACKAGE}.launch_manifest",
                      f"{PACKAGE}.rviz_config")
BLOCKED = ("rclpy", f"{PACKAGE}.ros", f"{PACKAGE}.cli")

# Core modules excluded from the import-time guard because they need ROS when imported.
# None today: the ROS-mode evaluation that starts the node set is cli/eval_ros.py.
ROS_ONLY_MODULES: dict[str, str] = {}

# Imports of the adapter inside functions of core modules, allowed with the reason. None: cli/ holds them.
DEFERRED_ROS_IMPORTS: dict[tuple[str, str], str] = {}

_CHILD = r"""
import importlib, json, pkgutil, sys, traceback

PACKAGE, ROOMS, EXTRA, BLOCKED, SKIP = json.loads(sys.argv[1])
attempts = []


def _blocked(name):
    return any(name == b or name.startswith(b + ".") for b in BLOCKED)


class Blocker:
    # Makes the blocked packages unimportable and records who asked for them.
    def find_spec(self, name, path=None, target=None):
        if not _blocked(name):
            return None
        frames, f = [], sys._getframe(1)
        while f is not None:
            if f.f_code.co_name == "<module>":
                frames.append(f.f_globals.get("__name__", "?"))
            f = f.f_back
        chain = [m for m in reversed(frames) if m != "__main__"]
        attempts.append({"blocked": name, "chain": chain})
        raise ImportError(f"import-direction guard: {name} is blocked")


sys.meta_path.insert(0, Blocker())
out = {"preloaded": sorted(m for m in sys.modules if _blocked(m))}

# The blocker itself must work, or the guard proves nothing.
sanity = {}
for probe in ("rclpy", "rclpy.node", PACKAGE + ".ros.node"):
    try:
        importlib.import_module(probe)
        sanity[probe] = "imported"
    except ImportError as exc:
        sanity[probe] = "blocked" if "import-direction guard" in str(exc) else f"other: {exc!r}"
    except Exception as exc:
        sanity[probe] = f"other: {exc!r}"
out["sanity"] = sanity
attempts.clear()

modules = []
for room in ROOMS:
    pkg = importlib.import_module(f"{PACKAGE}.{room}")
    modules.append(pkg.__name__)
    modules += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
modules += EXTRA
out["modules"] = modules

out["violations"], out["errors"] = [], []
for name in modules:
    if name in SKIP:
        continue
    before = len(attempts)
    try:
        importlib.import_module(name)
        error = None
    except BaseException:
        error = traceback.format_exc(limit=-8)
    new = attempts[before:]
    if new:
        out["violations"].append({"module": name, "attempts": new, "error": error})
    elif error:
        out["errors"].append({"module": name, "error": error})
out["loaded_blocked"] = sorted(m for m in sys.modules if _blocked(m))
print("@@RESULT@@" + json.dumps(out))
"""


def _run_child() -> dict:
    args = json.dumps([PACKAGE, list(CORE_ROOMS), list(EXTRA_CORE_MODULES), list(BLOCKED), sorted(ROS_ONLY_MODULES)])
    res = subprocess.run([sys.executable, "-c", _CHILD, args], capture_output=True, text=True, timeout=300,
                         cwd=PACKAGE_DIR.parent)
    marker = [line for line in res.stdout.splitlines() if line.startswith("@@RESULT@@")]
    assert res.returncode == 0 and marker, f"guard subprocess failed (rc {res.returncode}):\n{res.stderr[-4000:]}"
    return json.loads(marker[-1][len("@@RESULT@@"):])


def test_core_imports_without_rclpy():
    out = _run_child()

    # The guard is live: nothing blocked was loaded before it, and it does block.
    assert out["preloaded"] == [], f"blocked modules already imported at interpreter start: {out['preloaded']}"
    assert out["sanity"] == {"rclpy": "blocked", "rclpy.node": "blocked", f"{PACKAGE}.ros.node": "blocked"}, \
        out["sanity"]

    # The walk found the rooms and their modules (a broken walk must not pass vacuously).
    modules = out["modules"]
    for room in CORE_ROOMS:
        in_room = [m for m in modules if m.startswith(f"{PACKAGE}.{room}.")]
        assert in_room, f"no modules found under {PACKAGE}/{room}"
    assert f"{PACKAGE}.eval.ros_mode" in modules and f"{PACKAGE}.runtime.pipeline" in modules
    assert f"{PACKAGE}.launch_manifest" in modules
    assert set(ROS_ONLY_MODULES) <= set(modules), "stale ROS_ONLY_MODULES entry"

    report = [
        f"{v['module']} pulls {a['blocked']} via " + " -> ".join(a["chain"] + [a["blocked"]])
        for v in out["violations"] for a in v["attempts"]
    ]
    assert not report, "core module imports ROS at import time:\n" + "\n".join(report)
    assert out["loaded_blocked"] == [], out["loaded_blocked"]
    errors = "\n".join(f"--- {e['module']}\n{e['error']}" for e in out["errors"])
    assert not out["errors"], f"core modules failed to import (not a ROS import, but unguarded):\n{errors}"


def _core_sources():
    for room in CORE_ROOMS:
        yield from sorted((PACKAGE_DIR / room).rglob("*.py"))
    for name in EXTRA_CORE_MODULES:
        yield PACKAGE_DIR / (name.split(".", 1)[1].replace(".", "/") + ".py")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_names(tree: ast.AST, module: str, is_package: bool):
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = ".".join(base[: len(base) - node.level + 1])
                target = f"{parent}.{node.module}" if node.module else parent
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:
                yield node.lineno, f"{target}.{alias.name}"


def test_core_sources_have_no_deferred_ros_imports():
    found, allowed_seen = [], set()
    sources = list(_core_sources())
    assert len(sources) > len(CORE_ROOMS)
    for path in sources:
        module = _module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        for lineno, name in _imported_names(tree, module, path.name == "__init__.py"):
            if not any(name == b or name.startswith(b + ".") for b in BLOCKED):
                continue
            key = next((k for k in DEFERRED_ROS_IMPORTS if k[0] == module and (name == k[1] or
                        name.startswith(k[1] + "."))), None)
            if key is not None:
                allowed_seen.add(key)
                continue
            found.append(f"{path.relative_to(PACKAGE_DIR.parent)}:{lineno}: imports {name}")
    assert not found, "core module imports ROS (rclpy or the ros/ adapter) or cli/:\n" + "\n".join(found)
    assert allowed_seen == set(DEFERRED_ROS_IMPORTS), \
        f"stale DEFERRED_ROS_IMPORTS entries: {set(DEFERRED_ROS_IMPORTS) - allowed_seen}"


def test_ros_does_not_import_cli():
    """``ros/`` (the adapter) is below ``cli/``: no import of ``sparse_perception_ros.cli``, wherever it is."""
    found = []
    sources = sorted((PACKAGE_DIR / "ros").rglob("*.py"))
    assert sources
    for path in sources:
        module = _module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        for lineno, name in _imported_names(tree, module, path.name == "__init__.py"):
            if name == f"{PACKAGE}.cli" or name.startswith(f"{PACKAGE}.cli."):
                found.append(f"{path.relative_to(PACKAGE_DIR.parent)}:{lineno}: imports {name}")
    assert not found, "ros/ imports cli/:\n" + "\n".join(found)
