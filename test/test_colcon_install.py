"""The README's real-install path, built and run (issue 19, point 13).

A copy of the working tree goes to ``<tmp>/ws/src/sparse_perception_ros`` (a copy, so nothing a
build writes lands in the checkout) and ``colcon build`` builds it, twice: with the README's
``--symlink-install`` and plainly (what a release build installs: code and data copied, nothing
read from the source tree). The underlay is the venv, ``AMENT_PREFIX_PATH=$VIRTUAL_ENV``, which
stands for ``/opt/ros/<distro>`` of a real install (../shared/ENVIRONMENT.md). For each build:

- the build is clean (no colcon or setuptools warning beyond the venv-underlay one);
- the install tree has ``share/<pkg>/`` (launch, config, models, package.xml: every file of the
  source folders, same bytes), the ament index marker, and the console scripts in ``lib/<pkg>/``
  (where ``ros2 run`` and launch_ros look), each executable the launch files and node sets name;
- ``source install/setup.bash`` puts the package on the ament index and PYTHONPATH ahead of the
  venv's editable install;
- every path the README's real-install block names exists (the block is interpreted command by
  command; a command this test does not know fails it, so a README change cannot slip by);
- the installed ``perception_node``, started from the sourced environment with the installed
  parameter file and the launch manifest's remaps, turns a small synthetic bag played by the
  installed ``sparse-perception play`` into Detection3DArray messages on its output topic.
"""

from __future__ import annotations

import ast
import filecmp
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import rclpy
import yaml
from rclpy.executors import SingleThreadedExecutor
from vision_msgs.msg import Detection3DArray

from sparse_perception_ros.data import bagio
from sparse_perception_ros.launch_manifest import NODE_SETS, node_set
from sparse_perception_ros.processes import captured_output, start_captured, stop_process
from sparse_perception_ros.ros.convert import stamp_to_ns

REPO = Path(__file__).resolve().parents[1]
PKG = "sparse_perception_ros"
VENV = Path(sys.prefix)
COLCON = Path(sys.executable).parent / "colcon"
DATA_DIRS = ("launch", "config", "models")  # installed as share/<pkg>/<dir>/ (setup.py data_files)
# The only warning a clean build prints here: the venv underlay is not a colcon workspace.
KNOWN_WARNING = re.compile(r"AMENT_PREFIX_PATH doesn't contain any 'local_setup\.\*' files")
WARNING = re.compile(r"WARNING|Warning:|warnings\.warn|error:", re.I)

if not COLCON.exists():
    if (VENV / ".sparse_perception_setup").exists():  # scripts/setup.sh installs colcon (requirements/ros.txt)
        pytest.fail(f"{COLCON} is missing although scripts/setup.sh made this venv: run `make setup`",
                    pytrace=False)
    pytest.skip(f"colcon is not installed next to {sys.executable} (scripts/setup.sh installs it)",
                allow_module_level=True)


@dataclass(frozen=True)
class Build:
    home: Path  # stands for ~ in the README
    ws: Path  # ~/ws
    symlink: bool
    log: str

    @property
    def prefix(self) -> Path:  # isolated install layout: install/<pkg>
        return self.ws / "install" / PKG

    @property
    def share(self) -> Path:
        return self.prefix / "share" / PKG

    @property
    def lib(self) -> Path:
        return self.prefix / "lib" / PKG


def underlay_env(home: Path) -> dict[str, str]:
    """This process's environment as a shell with only the underlay sourced would have it."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COLCON_PREFIX_PATH", "CMAKE_PREFIX_PATH")}
    env["AMENT_PREFIX_PATH"] = str(VENV)
    env["COLCON_HOME"] = str(home / ".colcon")  # no user defaults or mixins
    return env


def sourced(build: Build, argv: list[str]) -> list[str]:
    """``argv`` run in a shell that sourced the workspace's install/setup.bash (from ~/ws, as the README)."""
    return ["bash", "-c", 'cd "$0" && source install/setup.bash && exec "$@"', str(build.ws), *argv]


def copy_working_tree(dest: Path) -> None:
    """The files git would commit (tracked and untracked-not-ignored) as they are now."""
    res = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                         timeout=60)
    if res.returncode != 0:  # not a git checkout (an unpacked archive): everything but the usual outputs
        shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "install", "log", "_build_interfaces", "__pycache__", "*.egg-info"))
        return
    for rel in res.stdout.decode().split("\0"):
        src = REPO / rel
        if rel and src.is_file():  # tracked but deleted in the working tree: not there
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


@pytest.fixture(scope="module", params=["symlink", "plain"])
def build(request, tmp_path_factory) -> Build:
    home = tmp_path_factory.mktemp(f"colcon_{request.param}")
    ws = home / "ws"
    copy_working_tree(ws / "src" / PKG)
    symlink = request.param == "symlink"
    argv = [str(COLCON), "build", "--event-handlers", "console_direct+", *(["--symlink-install"] if symlink else [])]
    res = subprocess.run(argv, cwd=ws, env=underlay_env(home), capture_output=True, text=True, timeout=300)
    log = res.stdout + res.stderr
    assert res.returncode == 0, f"{' '.join(argv)} failed:\n{log[-4000:]}"
    return Build(home=home, ws=ws, symlink=symlink, log=log)


@pytest.fixture(scope="module")
def probe(build) -> dict:
    """What a Python process sees after ``source install/setup.bash``."""
    code = (
        "import json, os, sparse_perception_ros\n"
        "from ament_index_python.packages import get_package_prefix, get_package_share_directory\n"
        "from sparse_perception_ros import paths\n"
        "from sparse_perception_ros.runtime.loading import bundled_weights_path\n"
        f"print(json.dumps({{'module': sparse_perception_ros.__file__, 'prefix': get_package_prefix('{PKG}'),\n"
        f"    'share': get_package_share_directory('{PKG}'), 'data_dir': str(paths.share_dir()),\n"
        "    'weights': str(bundled_weights_path('tiny')),\n"
        "    'env': {k: os.environ.get(k, '') for k in ('AMENT_PREFIX_PATH', 'PYTHONPATH', 'COLCON_PREFIX_PATH')}}))\n"
    )
    res = subprocess.run(sourced(build, [sys.executable, "-c", code]), env=underlay_env(build.home),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------
# The build and the install tree


def test_build_is_clean(build):
    assert f"Finished <<< {PKG}" in build.log, build.log[-3000:]
    noise = [line for line in build.log.splitlines() if WARNING.search(line) and not KNOWN_WARNING.search(line)
             and "byte-compiling is disabled" not in line]  # PYTHONDONTWRITEBYTECODE, when the caller sets it
    assert not noise, "the build warns:\n" + "\n".join(noise)


def console_scripts(src: Path) -> list[str]:
    """The console_scripts names setup.py declares."""
    for node in ast.walk(ast.parse((src / "setup.py").read_text())):
        if isinstance(node, ast.keyword) and node.arg == "entry_points":
            scripts = ast.literal_eval(node.value)["console_scripts"]
            return [s.split("=")[0].strip() for s in scripts]
    raise AssertionError("setup.py declares no entry_points")


def launched_executables(src: Path) -> set[str]:
    """Executables of this package that the launch files and the launch manifest's node sets start."""
    names = set()
    for path in (src / "launch").glob("*.launch.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "executable" and isinstance(node.value, ast.Constant):
                names.add(node.value.value)
    for kind in NODE_SETS:
        names |= {s.executable for s in node_set(kind, "/p.yaml", bag="/b", record_to="/r") if s.package == PKG}
    return names


def test_install_tree_has_data_files_marker_and_executables(build):
    src = build.ws / "src" / PKG
    assert (build.share / "package.xml").is_file()
    assert filecmp.cmp(build.share / "package.xml", src / "package.xml", shallow=False)
    for folder in DATA_DIRS:
        files = sorted(p.relative_to(src) for p in (src / folder).iterdir() if p.is_file())
        assert files, folder
        for rel in files:
            installed = build.share / rel
            assert installed.is_file(), f"{rel} is not installed in {build.share}"
            assert filecmp.cmp(installed, src / rel, shallow=False), rel
    for required in ("launch/perception.launch.py", "launch/replay.launch.py", "launch/sensor_check.launch.py",
                     "config/perception.param.yaml", "config/perception.schema.json", "config/perception.rviz",
                     "config/fastdds_large_data.xml", "models/tiny.pt"):
        assert (build.share / required).is_file(), required
    marker = build.prefix / "share" / "ament_index" / "resource_index" / "packages" / PKG
    assert marker.is_file(), "no ament index marker: ros2 pkg / get_package_share_directory cannot find the package"

    scripts = console_scripts(src)
    assert {"perception_node", "sensor_check", "sparse-perception"} <= set(scripts)
    assert launched_executables(src) <= set(scripts), "a launch file starts an executable setup.py does not declare"
    for name in scripts:
        exe = build.lib / name
        assert exe.is_file() and os.access(exe, os.X_OK), f"{exe} missing or not executable (ros2 run looks here)"
        assert exe.read_text().splitlines()[0] == f"#!{sys.executable}", exe
    assert not (build.prefix / "bin").exists(), "console scripts in bin/, where ros2 run does not look"


def test_sourced_workspace_finds_the_installed_package(build, probe):
    assert Path(probe["prefix"]) == build.prefix
    assert Path(probe["share"]) == build.share
    ament = probe["env"]["AMENT_PREFIX_PATH"].split(os.pathsep)
    assert ament[0] == str(build.prefix) and str(VENV) in ament
    module = Path(probe["module"])
    # the workspace's copy, not the venv's editable install of the checkout
    assert build.ws in module.parents, module
    if build.symlink:  # develop mode: the code and the data files are the source tree's
        assert Path(probe["data_dir"]).resolve() == (build.ws / "src" / PKG).resolve()
    else:  # installed: everything through the ament index, from share/
        assert build.prefix in module.parents, module
        assert Path(probe["data_dir"]) == build.share
        assert Path(probe["weights"]) == build.share / "models" / "tiny.pt"


# ------------------------------------------------------------------------------------------------
# The README's real-install block


def readme_block(readme: Path) -> list[str]:
    text = readme.read_text()
    start = text.index("**On a real ROS 2 install**")
    m = re.search(r"```bash\n(.*?)```", text[start:], re.S)
    assert m, "no ```bash block after 'On a real ROS 2 install' in the README"
    return [line for line in m.group(1).splitlines() if line.strip()]


def declared_launch_arguments(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument":
            names.add(node.args[0].value)
    return names


def check_readme_block(build: Build, pkg_prefix: Path) -> dict[str, list]:
    """Interpret the block command by command (cwd, ~, $(ros2 pkg prefix ...)) and check every path
    it names; returns what was checked and what was skipped, by command."""
    checked: dict[str, list] = {}

    def note(cmd: str, what) -> None:
        checked.setdefault(cmd, []).append(what)

    def path(word: str) -> Path:
        word = re.sub(r"^~(?=/|$)", str(build.home), word)
        return (cwd / word) if not word.startswith("/") else Path(word)

    def exists(p: Path, what: str) -> Path:
        assert p.exists(), f"README names {what} {p}, which does not exist after the build"
        return p

    cwd = build.home
    for line in readme_block(build.ws / "src" / PKG / "README.md"):
        line = re.sub(r"(^|\s)#.*$", "", line)  # comments
        line = re.sub(r"<[^>]*>", "URL", line)  # <this repository>

        def prefix_of(m: re.Match) -> str:
            assert m.group(1) == PKG, f"README asks for the prefix of {m.group(1)}, which this test cannot check"
            return str(pkg_prefix)

        line = re.sub(r"\$\(ros2 pkg prefix (\S+)\)", prefix_of, line)
        for command in line.split("&&"):
            words = shlex.split(command)
            if not words:
                continue
            cmd, args = words[0], words[1:]
            if cmd == "mkdir":
                for a in args:
                    if not a.startswith("-"):
                        note(cmd, exists(path(a), "a folder"))
            elif cmd == "cd":
                cwd = exists(path(args[0]), "a folder to cd into")
            elif cmd == "git" and args[0] == "clone":
                dest = cwd / args[-1]
                note(cmd, exists(dest / "package.xml", "the clone"))
            elif cmd == "sudo":  # apt packages of a real install: not checkable here
                note("skipped", command.strip())
            elif cmd == "pip":
                for flag, value in zip(args, args[1:], strict=False):
                    if flag in ("-c", "-r", "--constraint", "--requirement"):
                        note(cmd, exists(path(value), "a requirements file"))
            elif cmd == "colcon":
                assert args[0] == "build", command
                flags = args[1:]
                assert set(flags) <= {"--symlink-install"}, f"README builds with {flags}, which this test does not"
                note(cmd, flags)
            elif cmd in ("source", "."):
                note(cmd, exists(path(args[0]), "a setup file"))
            elif cmd == "export":
                for a in args:
                    name, _, value = a.partition("=")
                    if "/" in value:
                        note(cmd, exists(path(value), f"{name}="))
            elif cmd == "ros2" and args[0] == "launch":
                assert args[1] == PKG, command
                launch_file = exists(build.share / "launch" / args[2], "a launch file")
                declared = declared_launch_arguments(launch_file)
                for a in args[3:]:
                    assert a.partition(":=")[0] in declared, f"{args[2]} declares no argument {a}"
                note(cmd, launch_file)
            elif cmd == "ros2" and args[0] == "run":
                assert args[1] == PKG, command
                note(cmd, exists(build.lib / args[2], "an executable"))
            elif cmd == "rviz2":
                note(cmd, exists(path(args[args.index("-d") + 1]), "an RViz config"))
            else:
                raise AssertionError(f"the README's real-install block runs {command.strip()!r}, which this test "
                                     "does not know how to check: teach check_readme_block")
    return checked


def test_every_path_of_the_readme_real_install_block_exists(build, probe):
    checked = check_readme_block(build, Path(probe["prefix"]))
    for cmd in ("git", "pip", "colcon", "source", "export", "ros2", "rviz2"):
        assert checked.get(cmd), f"the README block no longer has a {cmd} command this test checks: {checked}"
    assert {p.name for p in checked["ros2"]} >= {"perception.launch.py", "replay.launch.py"}
    if build.symlink:
        assert ["--symlink-install"] in checked["colcon"]  # the README's build is the one under test


# ------------------------------------------------------------------------------------------------
# The installed node against a bag


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> Path:
    """One small synthetic scene (raw images, so the shipped parameter file applies unchanged)."""
    out = tmp_path_factory.mktemp("colcon_bag") / "bags"
    subprocess.run([sys.executable, "-m", "sparse_perception_ros.cli", "synth", "--bag-out", str(out), "--scenes", "1",
                    "--keyframes", "4", "--seed", "5", "--width", "160", "--height", "90", "--images", "raw",
                    "--lidar-hz", "4"], check=True, capture_output=True, timeout=300)
    return sorted(p for p in out.iterdir() if p.is_dir())[0]


def sweep_stamps(bag_path: Path, topic: str) -> set[int]:
    reader = bagio.open_reader(bag_path)
    try:
        return {t for _, t, _ in bagio.iter_messages(reader, [c for c in reader.connections if c.topic == topic])}
    finally:
        reader.close()


def installed_replay_set(build: Build, params_file: Path, bag: Path, env: dict) -> list[dict]:
    """The replay node set as the installed package builds it in the sourced workspace (what
    replay.launch.py gets there): name, executable, arguments and ros_args of each node."""
    code = (
        "import dataclasses, json\n"
        "from sparse_perception_ros.launch_manifest import node_set\n"
        f"specs = node_set('replay', {str(params_file)!r}, bag={str(bag)!r}, record_to='/unused')\n"
        "print(json.dumps([dict(dataclasses.asdict(s), ros_args=s.ros_args()) for s in specs]))\n"
    )
    res = subprocess.run(sourced(build, [sys.executable, "-c", code]), env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_installed_node_turns_a_played_bag_into_detections(build, probe, bag):
    """The node set of replay.launch.py, started as launch_ros would: each executable from
    lib/<pkg>/ in the sourced workspace, the node with its ros_args (installed parameter file,
    remaps), the player with its arguments. Run on the plain build only (CI time): its node reads
    config and weights from share/ (copies), the stricter case; the symlink tree is checked above."""
    if build.symlink:
        pytest.skip("the installed node runs against a bag on the plain build only (CI time budget)")
    params_file = build.share / "config" / "perception.param.yaml"
    env = underlay_env(build.home)
    env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(build.share / "config" / "fastdds_large_data.xml")  # as the README
    specs = {s["name"]: s for s in installed_replay_set(build, params_file, bag, env)}
    node_spec = next(s for s in specs.values() if s["executable"] == "perception_node")
    player_spec = next(s for s in specs.values() if s["arguments"] and s["arguments"][0] == "play")
    recorder_spec = next(s for s in specs.values() if s["arguments"] and s["arguments"][0] == "record")
    objects_topic = next(a for a in recorder_spec["arguments"] if a.endswith("/output/objects"))
    points_topic = next(dst for src, dst in node_spec["remaps"] if src.endswith("/points"))
    for f in node_spec["params_files"]:  # from the workspace (share/, or the source for --symlink-install)
        assert build.ws in Path(f).resolve().parents, f"the installed node set loads {f}, outside the workspace"

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    checker = rclpy.create_node("colcon_install_checker", context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(checker)
    objects: list[Detection3DArray] = []
    checker.create_subscription(Detection3DArray, objects_topic, objects.append, 100)

    def spin(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ex.spin_once(timeout_sec=0.05)

    node = start_captured(sourced(build, [str(build.lib / node_spec["executable"]), *node_spec["ros_args"]]), env=env)
    player = None
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 90 and node.poll() is None:  # model loaded, inputs subscribed
            if checker.count_publishers(objects_topic) and checker.count_subscribers(points_topic):
                break
            spin(0.2)
        assert node.poll() is None, f"the installed perception_node exited during start-up:\n{captured_output(node)}"
        assert checker.count_publishers(objects_topic), f"no publisher on {objects_topic} after 90 s:\n" \
            + captured_output(node)
        spin(1.0)  # the node's other subscriptions; the player also waits for subscribers
        player = start_captured(sourced(build, [str(build.lib / player_spec["executable"]),
                                                *player_spec["arguments"]]), env=env)
        t1 = time.monotonic()
        while player.poll() is None and time.monotonic() - t1 < 60:
            spin(0.1)
        spin(2.0)  # the last frames through the model
        assert node.poll() is None, f"the installed perception_node died while the bag played:\n{captured_output(node)}"
    finally:
        player_log = stop_process(player, timeout_s=10) if player is not None else ""
        node_log = stop_process(node, timeout_s=15)
        ex.shutdown()
        checker.destroy_node()
        rclpy.shutdown(context=ctx)
    logs = f"node log:\n{node_log[-3000:]}\nplayer log:\n{player_log[-2000:]}"
    assert player.returncode == 0, logs
    assert "Traceback" not in node_log, logs
    assert objects, f"no Detection3DArray on {objects_topic}; {logs}"
    params = yaml.safe_load(params_file.read_text())["/**"]["ros__parameters"]
    if not params["model"]["checkpoint"]:  # the preset's bundled weights, from share/ (plain) or the source (symlink)
        weights = Path(probe["data_dir"]) / "models" / f"{params['model']['preset']}.pt"
        assert str(weights) in node_log, f"the node did not say it loaded {weights}; {logs}"
    stamps = sweep_stamps(bag, points_topic)
    for msg in objects:
        assert msg.header.frame_id == params["frames"]["output_frame"]
        assert stamp_to_ns(msg.header.stamp) in stamps  # one output per played sweep, stamped with it
    assert sum(len(m.detections) for m in objects) > 0, f"{len(objects)} messages, all empty; {logs}"
