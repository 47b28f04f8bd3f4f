"""Single-machine Ray on 127.0.0.1 only, ``--quiet`` output, and the package as installed by pip.

* A local instance (``--workers N``) and a two-raylet cluster started with ``ray start`` (``--address``) keep
  every socket of every process they start on 127.0.0.1: listening, connected and UDP, sampled while the build
  runs (psutil, the copy Ray bundles).
* The cluster test runs the package from a ``pip install --target`` copy (driver and raylets outside the
  checkout, no PYTHONPATH shipped): the Ray workers import it from their own installation.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from builders.runner import BIND_ENV, bind_address
from tests import s3server
from tests.samples import SHARED

s3_server, s3_env = s3server.s3_server, s3server.s3_env

REPO = Path(__file__).resolve().parents[1]
RAW = SHARED / "fixtures" / "kitti_raw"
REFERENCE = REPO / "manifests" / "kitti-drive0009-fixture.json"
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1"}
SUMMARY = re.compile(r"^kitti/train: 2 units ok, 0 failed, 16 samples in 1 shards \(2 built now, 0 reused\)$")
needs_shared = pytest.mark.skipif(not RAW.exists(), reason="../shared/fixtures/kitti_raw is absent (a user's clone)")


def _env(**extra: str) -> dict[str, str]:
    drop = ("RAY_ADDRESS", BIND_ENV, "PYTHONPATH", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "AWS_PROFILE",
            "AWS_SESSION_TOKEN")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "RAY_AUTH_MODE": "disabled",
            "OMP_NUM_THREADS": "1", **extra}


# ------------------------------------------------------------------------------------------- sockets
def _psutil():  # noqa: ANN202 - a module
    """psutil, the copy Ray bundles (``import ray`` puts it on ``sys.path``)."""
    import ray  # noqa: F401

    return importlib.import_module("psutil")


def _process_trees(psutil, pids):  # noqa: ANN001, ANN202 - psutil module, its Process objects
    """{pid: Process} of each root pid and all its descendants (processes gone meanwhile are skipped)."""
    procs = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for p in (root, *root.children(recursive=True)):
                procs[p.pid] = p
        except psutil.Error:
            continue
    return procs


class SocketWatch:
    """Samples, every 0.2 s in a thread, the inet sockets of a set of processes and all their descendants."""

    def __init__(self, roots) -> None:  # noqa: ANN001 - callable returning root pids
        self.psutil, self.roots = _psutil(), roots
        self.seen: dict[tuple, tuple[str, int]] = {}  # (kind, laddr, raddr, status) -> (process name, pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SocketWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(0.2)

    def sample(self) -> None:
        psutil = self.psutil
        procs = _process_trees(psutil, self.roots())
        for p in procs.values():
            try:
                name = p.name()
                conns = p.net_connections(kind="inet") if hasattr(p, "net_connections") else p.connections("inet")
            except psutil.Error:
                continue
            for c in conns:
                raddr = f"{c.raddr.ip}:{c.raddr.port}" if c.raddr else ""
                kind = "udp" if c.type == 2 else "tcp"
                self.seen.setdefault((kind, f"{c.laddr.ip}:{c.laddr.port}", raddr, c.status), (name, p.pid))

    def outside_loopback(self) -> list[str]:
        bad = []
        for (kind, laddr, raddr, status), (name, pid) in self.seen.items():
            hosts = [laddr.rsplit(":", 1)[0]] + ([raddr.rsplit(":", 1)[0]] if raddr else [])
            if any(h not in LOOPBACK for h in hosts):
                bad.append(f"{name}[{pid}] {kind} {status} {laddr} -> {raddr or '-'}")
        return sorted(bad)

    def listeners(self) -> list[str]:
        """``name[pid]@ip:port`` of every listening socket seen."""
        return sorted(f"{name}[{pid}]@{laddr}" for (_, laddr, _, status), (name, pid) in self.seen.items()
                      if status == "LISTEN")


def _assert_loopback_only(watch: SocketWatch, *, expect: tuple[str, ...]) -> None:
    assert not watch.outside_loopback(), watch.outside_loopback()
    listeners = watch.listeners()
    for name in expect:  # the sample is not vacuous: the processes were seen listening
        assert any(item.startswith(name) for item in listeners), (name, listeners)


# ------------------------------------------------------------------------------------------- local instance
def test_bind_accepts_loopback_only(tmp_path: Path) -> None:
    assert bind_address("127.0.0.1") == bind_address("localhost") == "127.0.0.1"
    assert bind_address("") is None
    with pytest.raises(ValueError, match="only 127.0.0.1"):
        bind_address("0.0.0.0")
    result = subprocess.run([sys.executable, "-m", "builders.kitti", str(tmp_path), str(tmp_path / "out"),
                             "--bind", "10.0.0.1"], cwd=REPO, env=_env(PYTHONPATH=str(REPO)),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "only 127.0.0.1" in result.stderr, result.stderr


@needs_shared
def test_local_instance_listens_on_loopback_only_and_quiet_prints_one_line(tmp_path: Path) -> None:
    """``--workers 2 --executor ray --quiet``: every socket of the driver, GCS, raylet, agents and workers is on 127.0.0.1, and
    the output is the summary line alone (no "Started a local Ray instance.", no per-unit lines)."""
    command = [sys.executable, "-m", "builders.kitti", str(RAW), str(tmp_path / "out"), "--workers", "2",
               "--executor", "ray", "--quiet"]
    driver = subprocess.Popen(command, cwd=REPO, env=_env(PYTHONPATH=str(REPO)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        with SocketWatch(lambda: [driver.pid]) as watch:
            stdout, stderr = driver.communicate(timeout=180)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == 0, stdout + stderr
    assert SUMMARY.match(stdout.strip()) and stdout.count("\n") == 1, stdout
    assert stderr == "", stderr
    _assert_loopback_only(watch, expect=("gcs_server", "raylet", "python"))


# ------------------------------------------------------------------------------------------- packaging
@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install --no-deps --target SITE`` of a copy of the sources (the checkout is left untouched)."""
    pytest.importorskip("setuptools", reason="pip builds the package with the venv's setuptools (no network)")
    root = tmp_path_factory.mktemp("install")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("dynamo_depth", "builders", "train", "eval"):
        shutil.copytree(REPO / name, root / "src" / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, root / "src" / name)
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                             "--no-index", "--disable-pip-version-check", "--target", str(root / "site"),
                             str(root / "src")], env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return root / "site"


def test_pip_install_has_every_package_and_ships_no_pythonpath(installed: Path, tmp_path: Path) -> None:
    packages = sorted(str(p.parent.relative_to(REPO)).replace(os.sep, ".")
                      for top in ("dynamo_depth", "builders", "train", "eval") for p in (REPO / top).rglob("__init__.py"))
    probe = ("import importlib, json, sys; from builders.runner import worker_env; "
             "print(json.dumps({'files': {n: importlib.import_module(n).__file__ for n in sys.argv[1:]}, "
             "'env': worker_env()}))")
    result = subprocess.run([sys.executable, "-c", probe, *packages], cwd=tmp_path,
                            env=_env(PYTHONPATH=str(installed)), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert all(Path(f).is_relative_to(installed) for f in found["files"].values()), found["files"]
    assert found["env"] == {"RAY_AUTH_MODE": "disabled"}  # workers import their own installation
    assert (installed / "dynamo_depth" / "formats" / "waymo.proto").exists()


def test_pythonpath_is_shipped_from_a_checkout_only(tmp_path: Path) -> None:
    """A bare checkout ships ``PYTHONPATH=<checkout>``; an editable install of this checkout ships nothing."""
    probe = "import json; from builders.runner import worker_env; print(json.dumps(worker_env()))"
    bare = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=_env(PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=60)
    assert bare.returncode == 0, bare.stderr
    assert json.loads(bare.stdout)["PYTHONPATH"].split(os.pathsep)[0] == str(REPO)
    info = tmp_path / "meta" / "dynamo_depth-0.1.0.dist-info"  # what `pip install -e .` leaves in site-packages
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dynamo-depth\nVersion: 0.1.0\n")
    (info / "direct_url.json").write_text(json.dumps({"url": REPO.as_uri(), "dir_info": {"editable": True}}))
    editable = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path,
                              env=_env(PYTHONPATH=os.pathsep.join([str(tmp_path / "meta"), str(REPO)])),
                              capture_output=True, text=True, timeout=60)
    assert editable.returncode == 0, editable.stderr
    assert json.loads(editable.stdout) == {"RAY_AUTH_MODE": "disabled"}


def test_pyproject_pins_equal_requirements() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    pins = set(project["dependencies"]) | {d for name, deps in extras.items() if name != "all" for d in deps}
    required = {line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    assert pins == required
    assert extras["all"] == ["dynamo-depth[builders,s3,train]"]


# ------------------------------------------------------------------------------------------- two raylets
def _free_port() -> int:
    return s3server.free_ports(1)[0]


class LoopbackCluster:
    """A head and a second raylet on 127.0.0.1 (``ray start``), one CPU each, in their own temp dir."""

    def __init__(self, env: dict[str, str]) -> None:
        # a short folder: Ray's unix sockets live under it (108-byte path limit)
        self.temp_dir = tempfile.mkdtemp(prefix="rl", dir="/tmp")
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = env

    def _ray(self, *args: str, wrapper: bool, env: dict[str, str]) -> None:
        entry = [str(REPO / "tests" / "loopback_ray.py")] if wrapper else ["-c", "from ray.scripts.scripts import "
                                                                               "main; main()"]
        result = subprocess.run([sys.executable, *entry, "start", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                                 f"--temp-dir={self.temp_dir}", "--object-store-memory=80000000",
                                 "--disable-usage-stats", *args], env=env, cwd=self.temp_dir,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    def start(self) -> None:
        # the head as the README says: single-machine mode keeps the GCS, raylet and agents on 127.0.0.1
        self._ray("--head", f"--port={self.port}", f"--ray-client-server-port={_free_port()}",
                  "--include-dashboard=false", wrapper=False, env={**self.env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
        self._ray(f"--address={self.address}", wrapper=True, env=self.env)

    def pids(self) -> list[int]:
        """Every process of this cluster: its command line names the temp dir or the GCS address."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if self.temp_dir in cmdline or f"{self.address} " in cmdline.replace("\0", " ") + " ":
                found.append(int(entry))
        return found

    def task_nodes(self, task: str) -> set[str]:
        """Node ids of the workers that ran ``task`` (Ray's ``:task_name:`` markers and core-worker logs)."""
        logs = Path(self.temp_dir) / "session_latest" / "logs"
        nodes = set()
        for out in logs.glob("worker-*.out"):
            if f":task_name:{task}\n" in out.read_text(errors="replace"):
                worker_id = out.name.split("-")[1]
                for log in logs.glob(f"python-core-worker-{worker_id}_*.log"):
                    nodes.update(re.findall(r"node_id=([0-9a-f]{56})", log.read_text(errors="replace")))
        return nodes

    def stop(self) -> None:
        """SIGTERM this cluster's processes and their children (by pid: never `ray stop`, which stops every
        Ray instance of the user on the machine), SIGKILL what is left after 3 s."""
        psutil = _psutil()
        procs = _process_trees(psutil, self.pids())
        for p in procs.values():
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(list(procs.values()), timeout=3)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture
def cluster(installed: Path, s3_env: s3server.SeaweedS3) -> Iterator[LoopbackCluster]:
    """Raylets that import the package from the pip-installed copy and reach S3 (the AWS_* variables of every
    node, as the README says)."""
    cluster = LoopbackCluster(_env(PYTHONPATH=str(installed), **s3_env.env))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@needs_shared
def test_two_raylets_on_loopback_build_kitti_to_s3(cluster: LoopbackCluster, installed: Path,
                                                    s3_env: s3server.SeaweedS3, tmp_path: Path) -> None:
    """``--address 127.0.0.1:PORT --bind 127.0.0.1``: tasks on both raylets, the manifest in S3 equal to the
    reference, and no socket of the cluster, its workers or the driver outside 127.0.0.1."""
    out = f"s3://{s3server.BUCKET}/{uuid.uuid4().hex}/kitti"
    env = _env(PYTHONPATH=str(installed), **s3_env.env)
    command = [sys.executable, "-m", "builders.kitti", str(RAW), out, "--address", cluster.address,
               "--bind", "127.0.0.1", "--workers", "2", "--quiet"]
    driver = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        with SocketWatch(lambda: [driver.pid, *cluster.pids()]) as watch:
            stdout, stderr = driver.communicate(timeout=240)
            watch.sample()
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == 0, stdout + stderr
    assert SUMMARY.match(stdout.strip()) and stdout.count("\n") == 1 and stderr == "", stdout + stderr
    assert len(cluster.task_nodes("_remote_unit")) == 2, "the two units did not run on both raylets"
    _assert_loopback_only(watch, expect=("gcs_server", "raylet", "ray::"))
    assert len({item.split("@")[0] for item in watch.listeners() if item.startswith("raylet[")}) == 2
    verify = subprocess.run([sys.executable, "-m", "dynamo_depth", "verify", out, "--reference", str(REFERENCE)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    index = subprocess.run([sys.executable, "-m", "dynamo_depth", "index", out, "--check"],  # the build's sidecar
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert index.returncode == 0 and "up to date" in index.stdout, index.stdout + index.stderr
