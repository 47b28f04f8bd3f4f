"""Synthetic writers and builders give the same bytes whatever BLAS kernel numpy's OpenBLAS runs (issue #14).

OpenBLAS picks a kernel per CPU: Prescott (SSE3, no FMA) on some machines, Haswell/SkylakeX (FMA) on others,
and ``@``/``dot``/``np.linalg`` results differ in the last bits between them. Every command here runs in a
subprocess with ``OPENBLAS_CORETYPE`` forcing the kernel, which the subprocess checks with threadpoolctl before
it runs the command (``python -m ...`` through runpy). Where the CPU has AVX-512, a third run uses the SkylakeX
kernel (its dot, gemv and LAPACK paths differ from Haswell's) with numpy's own AVX-512 loops switched off
(``NPY_DISABLE_CPU_FEATURES``: numpy's exp, arctan2, power... then give other last bits, as on a CPU without
AVX-512, while the first two runs use them). A probe of BLAS/LAPACK and numpy results proves that every
configuration computes differently. Every raw file and every build output (shards, manifest.json) must then be
byte-identical across the configurations.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.cpu_flags import cpu_flags

REPO = Path(__file__).resolve().parents[1]
HAS_NUSCENES = importlib.util.find_spec("nuscenes") is not None
_AVX512 = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}
_NUMPY_AVX512 = "AVX512F AVX512CD AVX512_KNL AVX512_KNM AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL"


class Config(NamedTuple):
    name: str
    core: str  # OPENBLAS_CORETYPE
    numpy_disable: str  # NPY_DISABLE_CPU_FEATURES ("" = numpy's default dispatch)
    flags: frozenset[str]  # CPU flags (/proc/cpuinfo) it needs
    required: bool  # skip the module without it; optional ones are left out


CONFIGS = [  # the first one is the reference the others are compared with
    Config("Prescott", "Prescott", "", frozenset({"pni"}), True),  # SSE3 (pni in /proc/cpuinfo)
    Config("Haswell", "Haswell", "", frozenset({"avx2", "fma"}), True),
    # where the CPU has AVX-512: the SkylakeX kernel, and numpy's own AVX-512 loops off (both sources in one run)
    Config("SkylakeX-numpy-no-AVX512", "SkylakeX", _NUMPY_AVX512, frozenset(_AVX512), False),
]

# argv[1]: the core type asked for; argv[2]: a module run as ``python -m`` (or --probe); the rest: its arguments
_DRIVER = """
import hashlib, os, runpy, sys
import numpy as np
import threadpoolctl
from numpy.core._multiarray_umath import __cpu_features__
want, module = sys.argv[1], sys.argv[2]
kernels = {i["architecture"] for i in threadpoolctl.threadpool_info()
           if i["internal_api"] == "openblas" and "numpy" in i["filepath"]}
if kernels != {want}:
    sys.exit(f"numpy's OpenBLAS runs kernel(s) {sorted(kernels)}, {want} was asked for")
if os.environ.get("NPY_DISABLE_CPU_FEATURES") and __cpu_features__.get("AVX512F"):
    sys.exit("NPY_DISABLE_CPU_FEATURES had no effect: numpy still runs its AVX-512 loops")
if module == "--probe":  # BLAS/LAPACK (gemm, dot, inv) and numpy (exp) results: they differ between configurations
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(64, 4)), rng.normal(size=(4, 4))
    values = [a @ b, np.array([row.dot(row) for row in a]), np.linalg.inv(b), np.exp(a)]
    print(hashlib.sha256(b"".join(v.tobytes() for v in values)).hexdigest())
    sys.exit(0)
sys.argv = [module, *sys.argv[3:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""

# (name, synth arguments after the dataset, builder module and arguments after RAW OUT, or None for synth only)
CASES = [
    ("kitti", ["kitti", "--frames", "3"], ("builders.kitti", ["--cameras", "image_02"])),
    ("waymo_small", ["waymo", "--frames", "3", "--small"], ("builders.waymo", ["--split", "val"])),
    ("waymo", ["waymo", "--frames", "1"], None),
    ("nuscenes", ["nuscenes", "--frames", "3"], ("builders.nuscenes", ["--split", "all"]) if HAS_NUSCENES else None),
]


def _run(config: Config, module: str, *args: str) -> str:
    """Run ``python -m module args`` under ``config``; returns its stdout."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OPENBLAS_CORETYPE": config.core, "RAY_AUTH_MODE": "disabled",
           "NPY_DISABLE_CPU_FEATURES": config.numpy_disable}
    result = subprocess.run([sys.executable, "-c", _DRIVER, config.core, module, *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{config.name} {module} {args}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _digests(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by path relative to it."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _configs() -> list[Config]:
    flags = cpu_flags()
    missing = {c.name: sorted(c.flags - flags) for c in CONFIGS if c.required and c.flags - flags}
    if missing:
        pytest.skip(f"this CPU lacks the flags of OpenBLAS core types {missing} (read from /proc/cpuinfo)")
    return [c for c in CONFIGS if c.flags <= flags]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, dict[str, str]]]:
    """configuration -> {"probe", "raw/<case>", "build/<case>"} -> file digests (the probe: {"sha256": ...})."""
    root = tmp_path_factory.mktemp("cross_kernel")
    results: dict[str, dict[str, dict[str, str]]] = {}
    for config in _configs():  # one after the other: the machine may have only two cores
        results[config.name] = {"probe": {"sha256": _run(config, "--probe").split()[-1]}}
        for name, synth_args, builder in CASES:
            raw, out = root / config.name / "raw" / name, root / config.name / "build" / name
            _run(config, "dynamo_depth", "synth", synth_args[0], str(raw), *synth_args[1:], "--seed", "0")
            results[config.name][f"raw/{name}"] = _digests(raw)
            if builder is not None:
                _run(config, builder[0], str(raw), str(out), "--workers", "0", "--quiet", *builder[1])
                results[config.name][f"build/{name}"] = _digests(out)
    return results


def test_the_configurations_really_compute_differently(outputs: dict) -> None:
    probes = {name: result["probe"]["sha256"] for name, result in outputs.items()}
    assert len(set(probes.values())) == len(probes), \
        f"a configuration had no effect on BLAS/numpy results ({json.dumps(probes)}): the tests would prove nothing"


def _compare(outputs: dict, key: str) -> None:
    """Every configuration's digests of ``key`` equal the first one's, file by file."""
    reference_name = CONFIGS[0].name
    reference = outputs[reference_name][key]
    assert reference, f"{key}: no files written"
    for name, result in outputs.items():
        assert set(result[key]) == set(reference), f"{key}: {name} wrote other files than {reference_name}"
        differ = sorted(path for path in reference if result[key][path] != reference[path])
        assert not differ, f"{key}: {len(differ)} file(s) differ between {reference_name} and {name}: {differ[:5]}"


@pytest.mark.parametrize("name", [case[0] for case in CASES])
def test_raw_files_are_identical_across_kernels(outputs: dict, name: str) -> None:
    _compare(outputs, f"raw/{name}")


@pytest.mark.parametrize("name", [case[0] for case in CASES if case[2] is not None])
def test_builds_are_identical_across_kernels(outputs: dict, name: str) -> None:
    built = outputs[CONFIGS[0].name][f"build/{name}"]
    assert "manifest.json" in built and any(path.endswith(".tar") for path in built), sorted(built)
    _compare(outputs, f"build/{name}")


# ---------------------------------------------------------------- the software FMA the writers' products use
def _fma_exact(a: float, b: float, c: float) -> float:
    """a * b + c in rational arithmetic, rounded once to the nearest double (ties to even); IEEE signed zeros."""
    import math
    from fractions import Fraction

    product = Fraction(a) * Fraction(b)
    if product + Fraction(c) != 0:
        return float(product + Fraction(c))
    negative_zeros = product == 0 and c == 0 and math.copysign(1.0, a) * math.copysign(1.0, b) < 0 \
        and math.copysign(1.0, c) < 0
    return -0.0 if negative_zeros else 0.0  # an exact zero sum is +0 unless both terms are -0


def test_emulated_fma_rounds_once() -> None:
    import numpy as np

    from dynamo_depth.synth.fused import fma, matmul_fused

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=3000), rng.normal(size=3000)
    scale = 10.0 ** rng.integers(-20, 21, size=3000)
    c = np.concatenate([rng.normal(size=1000) * scale[:1000],  # any sum
                        -(a * b)[1000:2000] * (1 + rng.integers(-4, 5, size=1000) * 2.0**-52),  # cancellation
                        (a * b)[2000:] * 2.0**-60])  # c below the product's last bit
    zeros = np.array([0.0, -0.0, 1.0, -1.0])
    grid = [g.ravel() for g in np.meshgrid(zeros, zeros, zeros)]  # signed zeros
    for x, y, z in ((a, b, c), tuple(grid)):
        got = fma(x, y, z)
        want = np.array([_fma_exact(*v) for v in zip(x.tolist(), y.tolist(), z.tolist(), strict=True)])
        assert np.array_equal(got.view(np.int64), want.view(np.int64))
    m, n = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    np.testing.assert_allclose(matmul_fused(m, n), m @ n, rtol=1e-14, atol=1e-15)
    with pytest.raises(ValueError, match="underflow"):
        fma(1e-200, 1e-200, 1.0)


# ---------------------------------------------------------------- the video builder (a fisheye camera: undistortion)
FISHEYE_YAML = "model: OPENCV_FISHEYE\nwidth: 320\nheight: 96\nparams: [180.0, 180.0, 160.5, 48.0, 0.2, -0.05, 0.01, -0.002]\n"


def test_video_builds_are_identical_across_kernels(tmp_path: Path) -> None:
    """builders.video (PyAV decode, fisheye maps, crop / resize, K) writes the same bytes under every kernel."""
    import numpy as np

    from tests.test_builder_video import write_video

    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, size=(96, 400, 3), dtype=np.uint8)
    write_video(tmp_path / "clip.mp4", [np.ascontiguousarray(texture[:, 8 * i:8 * i + 320]) for i in range(6)])
    (tmp_path / "camera.yaml").write_text(FISHEYE_YAML)
    digests = {}
    for config in _configs():
        out = tmp_path / config.name
        _run(config, "builders.video", str(tmp_path / "clip.mp4"), str(out), "--camera", str(tmp_path / "camera.yaml"),
             "--size", "192x64", "--workers", "0", "--quiet")
        digests[config.name] = _digests(out)
    reference = digests[CONFIGS[0].name]
    assert "manifest.json" in reference and any(path.endswith(".tar") for path in reference), sorted(reference)
    for name, found in digests.items():
        assert found == reference, f"builders.video: {name} wrote other bytes than {CONFIGS[0].name}"
