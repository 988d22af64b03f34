"""Package plumbing: CLI, doctor, package.xml dependencies, data files, setup idempotence."""

import ast
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sparse_perception_ros.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "sparse_perception_ros.cli"]


def run_cli(*args, timeout=120):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_doctor_reports_truthfully():
    res = run_cli("doctor", "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    ros, ml = report["ros"], report["ml"]
    assert ros["rmw"] == "rmw_fastrtps_cpp"
    assert ros["vision_msgs/Detection3DArray hash"].startswith(
        "RIHS01_793f5eab9595ac1c0da07873cc859db42eae51f0ee76056db8562515d830e018")
    assert ros["tf2_msgs/TFMessage hash"].startswith(
        "RIHS01_e369d0f05a23ae52508854b66f6aa0437f3449d652e8cbf22d5abe85d020f087")
    if importlib.util.find_spec("tensorrt") is None:
        assert ml["TensorRT"].startswith("not available (ModuleNotFoundError")
    else:
        assert ml["TensorRT"].startswith("yes")
    import torch

    assert ml["GPU"].startswith("yes" if torch.cuda.is_available() else "no (")
    assert ml["torch"].startswith(torch.__version__)


def test_doctor_text_output_has_every_line():
    res = run_cli("doctor")
    assert res.returncode == 0
    for key in ("ROS distro", "rmw", "vision_msgs/Detection3DArray hash", "torch", "onnxruntime", "TensorRT", "GPU"):
        assert re.search(rf"^\s+{re.escape(key)}\s+\S", res.stdout, re.M), key


def test_cli_help_lists_every_command_and_each_has_help():
    res = run_cli("--help")
    assert res.returncode == 0
    for name in COMMANDS:
        assert name in res.stdout
        sub = run_cli(name, "--help")
        assert sub.returncode == 0 and "usage: sparse-perception " + name in sub.stdout, sub.stderr


def test_cli_unknown_command_fails_cleanly():
    res = run_cli("no-such-command")
    assert res.returncode == 2 and "invalid choice" in res.stderr


def msg_packages_imported() -> set[str]:
    found = set()
    for path in (REPO / "sparse_perception_ros").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.endswith((".msg", ".srv")):
                found.add(node.module.split(".")[0])
    return found


def test_package_xml_declares_every_message_package_used():
    xml = (REPO / "package.xml").read_text()
    declared = set(re.findall(r"<exec_depend>([\w]+)</exec_depend>", xml))
    used = msg_packages_imported()
    assert {"sensor_msgs", "vision_msgs", "visualization_msgs"} <= used
    assert used <= declared, f"missing exec_depend: {sorted(used - declared)}"
    assert '<package format="3">' in xml and "<build_type>ament_python</build_type>" in xml


def test_setup_py_installs_data_files_and_marker():
    text = (REPO / "setup.py").read_text()
    for needle in ("share/ament_index/resource_index/packages", "launch/*.launch.py", "config/*.yaml", "models/",
                   "sparse-perception = sparse_perception_ros.cli:main"):
        assert needle in text
    assert (REPO / "resource" / "sparse_perception_ros").is_file()
    cfg = (REPO / "setup.cfg").read_text()
    assert "install_scripts=$base/lib/sparse_perception_ros" in cfg  # where `ros2 run` looks


def test_launch_files_are_valid_python():
    files = sorted((REPO / "launch").glob("*.launch.py"))
    assert files
    for path in files:
        tree = ast.parse(path.read_text())
        assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)


@pytest.mark.skipif(not (REPO / ".venv" / ".sparse_perception_setup").exists(),
                    reason="environment was not made by scripts/setup.sh (no stamp in .venv)")
def test_setup_stamp_matches_inputs_so_a_rerun_is_a_no_op():
    """make test runs the setup first; afterwards the setup's own check must find nothing to do."""
    res = subprocess.run(["bash", str(REPO / "scripts" / "setup.sh"), "--check"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr + " (run `make setup` after changing setup inputs)"
    assert "environment up to date" in res.stdout
