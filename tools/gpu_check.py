"""The GPU check (issue 17): one prepared run on a GPU machine proves the CUDA path; its dry run here proves the script.

    python tools/gpu_check.py collect                 # here, with network (make gpu-wheels): fill .gpu/
    bash tools/gpu_check.sh run [--out DIR]           # on the GPU machine (make gpu-check); the device's python3
    bash tools/gpu_check.sh run --cpu [--quick]       # the dry run here: the same steps on the CPU, with .venv

``collect`` downloads the wheels of ``requirements/gpu.txt`` for CPython 3.12 on manylinux x86-64 (``[carry]``,
versions of ``requirements/constraints.txt``; ``[build]``) and the mmcv 2.1.0 sdist into ``.gpu/`` (ignored by git;
carried to the machine with ``carry=[".gpu"]``), replacing what was there only when all downloads succeeded, checks
that every requirement of the carried wheels is carried, ``[provided]`` by the image or ``[exempt]`` (with the
reason), and prints the size against the device's 64 MiB.

``run`` does, each step timed and recorded, going on after a failed step where the next can still say something:

1. ``environment``: Python, torch, CUDA, the GPU and its compute capability, nvcc, cores.
2. ``wheels``: ``pip install --no-index --no-deps --target SITE .gpu/wheels/*.whl`` and the closure check above on
   what was installed. Dry run: the same install for Python 3.12 into a scratch folder (pip's cross-platform
   ``--python-version``), which proves the set installs; the run itself then uses .venv.
3. ``numpy_abi``: lie-learn's cp312 wheel is compiled against numpy 1.x, the image has numpy 2 (escnn imports
   ``lie_learn.representations.SO3.irrep_bases``). If that import fails, its ``.pyx`` (shipped in the wheel) are
   compiled again in SITE with the image's Cython against its numpy.
4. ``mmcv``: mmcv's compiled ops must run on the device (``nms_rotated`` on a device tensor). If not: an mmcv wheel
   built by an earlier run (``.gpu/mmcv-*.whl``, see below) is installed, else mmcv is built from the carried sdist
   with ``requirements/mmcv-2.1.0.patch`` (the one patch ``tools/install_env.sh`` applies too), ``MMCV_WITH_OPS=1
   FORCE_CUDA=1``, ``TORCH_CUDA_ARCH_LIST`` = the GPU's capability only, ``MAX_JOBS`` = the cores. The wheel is
   copied to OUT (split in 15 MiB parts ``*.partNN`` when larger; ``cat`` them back together): carried as
   ``.gpu/mmcv-...whl`` by a second call, it skips the build. Dry run: checks that the patch applies to the sdist;
   ``--build-mmcv`` builds the CPU ops here (~25 min on 2 cores).
5. ``rotplugin``: its C row copier is built in place when it does not import.
6. ``tests``: ``pytest -m cuda tests`` (``tests/test_cuda.py``, the CUDA tests of ``test_riroi_align`` and
   ``test_fields``), JUnit XML in OUT; dry run with ``ROTPLUGIN_CUDA_TESTS=cpu``.
7. ``timings``: ``tools/benchmark_gpu.py`` (training iteration and peak memory fp32 / AMP against stock mmrotate,
   feature / image TTA at 1025², rotate_fields against a clone), JSON in OUT; ``--quick`` in the dry run.

OUT (default ``$OUT``, else ``work_dirs/gpu_check``) gets ``gpu_check.json`` (the summary: mode, every step's
status, seconds and detail, the test counts and failures, the timings), ``gpu_check.log`` (every command's output),
``cuda_tests.xml``, ``gpu_timings.json``. ``--budget-s`` (default 480) bounds the whole run: a step that would run
past it is stopped, the steps after it are recorded as skipped, and the summary is still written. Exit status 0
only when every step passed. A dry run says so in ``mode``: none of its figures is a GPU figure.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
GPU_DIR = ROOT / ".gpu"
REQUIREMENTS = ROOT / "requirements" / "gpu.txt"
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"
MMCV_PATCH = ROOT / "requirements" / "mmcv-2.1.0.patch"
MMCV_VERSION = "2.1.0"
DEVICE_MIB = 64                      # what one call carries (working tree + carried folders)
PART_BYTES = 15 * 2 ** 20            # files back from $OUT: 16 MiB each at most
# the GPU machine: CPython 3.12 on manylinux x86-64 (pip matches the manylinux tags exactly)
TARGET_PYTHON = "3.12"
TARGET_PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
                    "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64"]
TARGET_MARKERS = {"python_version": TARGET_PYTHON, "python_full_version": TARGET_PYTHON + ".3",
                  "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                  "os_name": "posix", "implementation_name": "cpython", "platform_python_implementation": "CPython",
                  "extra": ""}
STEPS = ("environment", "wheels", "numpy_abi", "mmcv", "rotplugin", "tests", "timings")


# ---------------------------------------------------------------------------------------------------------------
# requirements/gpu.txt
# ---------------------------------------------------------------------------------------------------------------
def canonical(name: str) -> str:
    """PEP 503 name: ``lie_learn``, ``Lie-Learn`` and ``lie.learn`` are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_gpu_requirements(path: Path = REQUIREMENTS) -> Dict[str, dict]:
    """``{"carry": [names], "build": [specs], "provided": {names}, "exempt": {name: reason}}`` of a sectioned file
    (``[carry]`` etc.; ``#`` comments; ``[provided]`` takes names separated by blanks, ``[exempt]`` ``name: reason``)."""
    sections = {"carry": [], "build": [], "provided": set(), "exempt": {}}
    current = None
    for number, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            if current not in sections:
                raise ValueError(f"{path}:{number}: unknown section [{current}] (known: {sorted(sections)})")
            continue
        if current is None:
            raise ValueError(f"{path}:{number}: {line!r} is outside any section")
        if current == "provided":
            sections["provided"].update(canonical(n) for n in line.split())
        elif current == "exempt":
            name, sep, reason = line.partition(":")
            if not sep or not reason.strip():
                raise ValueError(f"{path}:{number}: an exemption needs 'name: reason', got {line!r}")
            sections["exempt"][canonical(name.strip())] = reason.strip()
        else:
            sections[current].append(line)
    return sections


def pinned(names: List[str], constraints: Path = CONSTRAINTS) -> List[str]:
    """``name==version`` for each name, the version from the CPU stack's frozen constraints."""
    versions = {}
    for line in Path(constraints).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            versions[canonical(name.strip())] = version.strip()
    missing = [n for n in names if "==" not in n and canonical(n) not in versions]
    if missing:
        raise ValueError(f"no version of {missing} in {constraints}: pin them there or in {REQUIREMENTS.name}")
    return [n if "==" in n else f"{n}=={versions[canonical(n)]}" for n in names]


# ---------------------------------------------------------------------------------------------------------------
# wheels: what is installed, and whether every requirement is met
# ---------------------------------------------------------------------------------------------------------------
def installed_metadata(site: Path) -> Dict[str, List[str]]:
    """``{canonical name: [Requires-Dist lines]}`` of every ``*.dist-info`` in ``site``."""
    from email.parser import Parser

    out = {}
    for meta in sorted(Path(site).glob("*.dist-info/METADATA")):
        msg = Parser().parsestr(meta.read_text(errors="replace"), headersonly=True)
        out[canonical(msg["Name"])] = msg.get_all("Requires-Dist") or []
    return out


def missing_requirements(site: Path, provided, exempt) -> Dict[str, List[str]]:
    """``{requirement name: [carried dists that need it]}`` for requirements of the dists in ``site`` (markers
    evaluated for the GPU machine) that are neither installed there, nor provided by its image, nor exempt."""
    from packaging.requirements import Requirement

    dists = installed_metadata(site)
    missing: Dict[str, List[str]] = {}
    for dist, requires in dists.items():
        for line in requires:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(TARGET_MARKERS):
                continue
            name = canonical(req.name)
            if name not in dists and name not in provided and name not in exempt:
                missing.setdefault(name, []).append(dist)
    return missing


def duplicate_dists(wheels: List[Path]) -> Dict[str, List[str]]:
    """Wheel files that are two versions of one distribution (pip then refuses the whole install)."""
    by_name: Dict[str, List[str]] = {}
    for w in wheels:
        by_name.setdefault(canonical(w.name.split("-")[0]), []).append(w.name)
    return {n: files for n, files in by_name.items() if len(files) > 1}


def pip_download(python: str, specs: List[str], dest: Path, binary: bool = True) -> None:
    cmd = [python, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps", "-d", str(dest)]
    if binary:
        cmd += ["--only-binary=:all:", "--python-version", TARGET_PYTHON, "--implementation", "cp"]
        for plat in TARGET_PLATFORMS:
            cmd += ["--platform", plat]
    else:       # the mmcv sdist: its metadata step imports torch, so no build isolation
        cmd += ["--no-binary", ":all:", "--no-build-isolation"]
    subprocess.run(cmd + specs, check=True)


def folder_mib(folder: Path) -> float:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 2 ** 20


def collect(dest: Path = GPU_DIR, python: str = sys.executable) -> dict:
    """Download everything the GPU machine needs into ``dest`` (new files replace old ones only at the end)."""
    reqs = read_gpu_requirements()
    carry, build = pinned(reqs["carry"]), reqs["build"]
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".collect-", dir=dest))
    try:
        print(f"downloading {len(carry)} wheels for CPython {TARGET_PYTHON} manylinux x86-64", flush=True)
        pip_download(python, carry, scratch / "wheels")
        pip_download(python, build, scratch / "build")
        print(f"downloading the mmcv {MMCV_VERSION} sdist", flush=True)
        pip_download(python, [f"mmcv=={MMCV_VERSION}"], scratch / "sdist", binary=False)
        wheels = sorted((scratch / "wheels").glob("*.whl"))
        dups = duplicate_dists(wheels)
        if dups:
            raise RuntimeError(f"two versions of one distribution were downloaded: {dups}")
        site = scratch / "site"
        pip_install_target(python, wheels, site, cross=True)
        missing = missing_requirements(site, reqs["provided"], reqs["exempt"])
        if missing:
            raise RuntimeError(f"requirements of the carried wheels that nothing provides: {missing}; add them to "
                               f"[carry], [provided] or [exempt] of {REQUIREMENTS}")
        shutil.rmtree(site)
        for name in ("wheels", "build"):
            shutil.rmtree(dest / name, ignore_errors=True)
            (scratch / name).rename(dest / name)
        for old in dest.glob(f"mmcv-{MMCV_VERSION}.tar.gz"):
            old.unlink()
        (scratch / "sdist" / f"mmcv-{MMCV_VERSION}.tar.gz").rename(dest / f"mmcv-{MMCV_VERSION}.tar.gz")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    files = sorted(p for p in dest.rglob("*") if p.is_file())
    manifest = {str(p.relative_to(dest)): {"bytes": p.stat().st_size,
                                           "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for p in files}
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    mib = folder_mib(dest)
    print(f"{dest}: {len(files)} files, {mib:.1f} MiB of the {DEVICE_MIB} MiB one call carries (the working tree "
          f"counts too)", flush=True)
    if mib > DEVICE_MIB - 8:
        print(f"WARNING: {mib:.1f} MiB leaves less than 8 MiB for the working tree", flush=True)
    return {"files": len(files), "mib": mib}


def pip_install_target(python: str, wheels: List[Path], site: Path, cross: bool = False,
                       runner=None, timeout: Optional[float] = None) -> None:
    """``pip install --no-index --no-deps --target site`` of ``wheels``; ``cross``: as for the GPU machine's
    Python 3.12 (pip only unpacks, so any Python can check that the set installs there)."""
    cmd = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index", "--no-deps",
           "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(site)]
    if cross:
        cmd += ["--only-binary=:all:", "--python-version", TARGET_PYTHON, "--implementation", "cp"]
        for plat in TARGET_PLATFORMS:
            cmd += ["--platform", plat]
    cmd += [str(w) for w in wheels]
    if runner is None:
        subprocess.run(cmd, check=True)
    else:
        runner(cmd, timeout=timeout)


# ---------------------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------------------
class StepFailed(RuntimeError):
    pass


class BudgetSpent(RuntimeError):
    pass


class Check:
    """One run of the check: the log, the budget, the steps' records, the environment of the commands."""

    def __init__(self, out: Path, cpu: bool, budget_s: float, site: Path, python: str = sys.executable):
        self.out, self.cpu, self.site, self.python = Path(out), cpu, Path(site), python
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out / "gpu_check.log"
        self.log = open(self.log_path, "a", buffering=1)
        self.t0 = time.monotonic()
        self.deadline = self.t0 + budget_s
        self.device = "cpu" if cpu else "cuda"
        self.summary = {"mode": ("cpu dry run: the GPU check's steps on the CPU; no figure in it is a GPU figure"
                                 if cpu else "gpu"),
                        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "budget_s": budget_s,
                        "steps": {}, "passed": False}
        self.env = dict(os.environ)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self.env["PYTHONWARNINGS"] = "ignore::UserWarning"
        paths = [str(ROOT)] + ([] if cpu else [str(self.site)])
        self.env["PYTHONPATH"] = os.pathsep.join(paths[::-1] + [p for p in [os.environ.get("PYTHONPATH")] if p])
        if cpu:
            self.env["ROTPLUGIN_CUDA_TESTS"] = "cpu"

    def say(self, text: str) -> None:
        line = f"[gpu_check {time.monotonic() - self.t0:6.1f}s] {text}"
        print(line, flush=True)
        self.log.write(line + "\n")

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def sh(self, cmd, timeout: Optional[float] = None, env: Optional[dict] = None, cwd=None,
           check: bool = True) -> subprocess.CompletedProcess:
        """Run ``cmd`` with its output into the log (and stdout); stopped at the budget's end (or ``timeout``)."""
        left = self.remaining() if timeout is None else min(timeout, self.remaining())
        if left <= 1:
            raise BudgetSpent(f"no budget left for {cmd[0] if isinstance(cmd, list) else cmd}")
        self.log.write(f"$ {' '.join(map(str, cmd))}\n")
        proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env or self.env, cwd=cwd or ROOT, start_new_session=True, errors="replace")
        tail: List[str] = []
        timed_out = False
        end = time.monotonic() + left
        try:
            for line in proc.stdout:
                self.log.write(line)
                sys.stdout.write(line)
                tail = (tail + [line.rstrip()])[-40:]
                if time.monotonic() > end:
                    timed_out = True
                    break
            if not timed_out:
                proc.wait(timeout=max(1.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
        if timed_out:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise BudgetSpent(f"{Path(str(cmd[1] if len(cmd) > 1 else cmd[0])).name} stopped after {left:.0f} s "
                              f"(budget)")
        result = subprocess.CompletedProcess(cmd, proc.returncode, "\n".join(tail), "")
        if check and proc.returncode != 0:
            raise StepFailed(f"{' '.join(map(str, cmd[:4]))} ... exited {proc.returncode}: " + " | ".join(tail[-5:]))
        return result

    def python_ok(self, code: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return self.sh([self.python, "-c", code], timeout=timeout, check=False)

    def step(self, name: str, fn) -> bool:
        record = self.summary["steps"][name] = {"status": "running"}
        if self.remaining() <= 1:
            record.update(status="skipped", detail="budget spent before this step")
            self.say(f"{name}: skipped (budget spent)")
            return False
        self.say(f"{name} ...")
        t = time.monotonic()
        try:
            detail = fn()
            record.update(status="ok", detail=detail)
        except BudgetSpent as err:
            record.update(status="timed out", detail=str(err))
        except Exception as err:      # recorded, and the run goes on: the summary says what failed
            record.update(status="failed", detail=f"{type(err).__name__}: {err}")
        record["seconds"] = round(time.monotonic() - t, 2)
        self.say(f"{name}: {record['status']} ({record['seconds']} s): {record.get('detail')}")
        self.save()
        return record["status"] == "ok"

    def save(self) -> None:
        path = self.out / "gpu_check.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.summary, indent=1, default=str))
        tmp.replace(path)


# --- the steps ---------------------------------------------------------------------------------------------------
def step_environment(check: Check) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "cores": os.cpu_count(), "machine": platform.machine()}
    try:
        import numpy
        info["numpy"] = numpy.__version__
    except ImportError:
        info["numpy"] = None
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        info.update(gpu=torch.cuda.get_device_name(0), capability=f"{major}.{minor}",
                    gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1))
    nvcc = shutil.which("nvcc")
    if nvcc:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
        info["nvcc"] = out[-1] if out else "?"
    if not check.cpu and not torch.cuda.is_available():
        raise StepFailed(f"torch {torch.__version__} sees no CUDA device (use --cpu for the dry run): {info}")
    check.summary["environment"] = info
    return info


def step_wheels(check: Check) -> dict:
    wheels = sorted((GPU_DIR / "wheels").glob("*.whl"))
    if not wheels:
        if check.cpu:
            return "no .gpu/wheels here (make gpu-wheels): the dry run uses .venv"
        raise StepFailed("no wheels in .gpu/wheels: run `make gpu-wheels` where there is network and carry .gpu")
    dups = duplicate_dists(wheels)
    if dups:
        raise StepFailed(f"two versions of one distribution in .gpu/wheels: {dups}")
    reqs = read_gpu_requirements()
    site = Path(tempfile.mkdtemp(prefix="gpu-site-")) if check.cpu else check.site
    pip_install_target(check.python, wheels, site, cross=check.cpu,
                       runner=lambda cmd, timeout=None: check.sh(cmd, timeout=timeout), timeout=300)
    try:
        missing = missing_requirements(site, reqs["provided"], reqs["exempt"])
    except ImportError:      # packaging is in the image; without it the install stands, unchecked
        missing = None
    installed = sorted(installed_metadata(site))
    if check.cpu:
        shutil.rmtree(site, ignore_errors=True)
    if missing:
        raise StepFailed(f"requirements that nothing provides: {missing}")
    return {"installed": installed, "into": "a scratch folder, for Python 3.12 (dry run)" if check.cpu else str(site),
            "closure": "unchecked (no packaging)" if missing is None else "complete"}


LIE_LEARN_IMPORT = "import lie_learn.representations.SO3.irrep_bases as m; print(m.__file__)"
# compiles every .pyx of lie_learn in place (the wheel ships them), against the numpy that is imported
LIE_LEARN_REBUILD = r"""
import glob, os, sys, tempfile
import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
site = sys.argv[1]
os.chdir(site)
exts = [Extension(p[:-4].replace(os.sep, "."), [p], include_dirs=[numpy.get_include()])
        for p in sorted(glob.glob("lie_learn/**/*.pyx", recursive=True))]
failed = []
with tempfile.TemporaryDirectory() as tmp:
    for ext in exts:
        for level in (3, 2):    # some of lie_learn's .pyx are Python 2 (print statements)
            try:
                setup(script_args=["build_ext", "--inplace", "--build-temp", tmp, "--build-lib", tmp],
                      ext_modules=cythonize([ext], language_level=level, quiet=True, force=True))
                break
            except BaseException as err:   # a module escnn does not import may not compile against numpy 2
                last = err
        else:
            failed.append(f"{ext.name}: {last}")
print("rebuilt", len(exts) - len(failed), "of", len(exts), "; failed:", failed)
"""


def step_numpy_abi(check: Check) -> dict:
    first = check.python_ok(LIE_LEARN_IMPORT)
    if first.returncode == 0:
        return "lie_learn's compiled module imports with this numpy: nothing to rebuild"
    if check.cpu:
        raise StepFailed(f"lie_learn does not import in .venv: {first.stdout[-300:]}")
    if "numpy" not in first.stdout.lower():
        raise StepFailed(f"lie_learn does not import, and not for numpy: {first.stdout[-300:]}")
    check.sh([check.python, "-c", LIE_LEARN_REBUILD, str(check.site)], timeout=240)
    again = check.python_ok(LIE_LEARN_IMPORT)
    if again.returncode != 0:
        raise StepFailed(f"lie_learn still does not import after compiling it again: {again.stdout[-300:]}")
    return "lie_learn compiled again against this numpy (its wheel was built against numpy 1.x)"


def mmcv_probe_code(device: str) -> str:
    return ("import torch, mmcv; from mmcv.ops import nms_rotated; "
            f"b = torch.tensor([[10., 10, 8, 4, 0.3], [10.5, 10, 8, 4, 0.3], [30, 30, 5, 5, 0]], device='{device}'); "
            f"keep = nms_rotated(b, torch.tensor([0.9, 0.8, 0.7], device='{device}'), 0.5)[1]; "
            "assert sorted(keep.tolist()) == [0, 2], keep; print('mmcv', mmcv.__version__, 'ops run on', b.device)")


def apply_mmcv_patch(src: Path, check: Check, dry_run: bool = False) -> None:
    """``requirements/mmcv-2.1.0.patch`` in the sdist root ``src``, with ``patch`` or else ``git apply``."""
    if shutil.which("patch"):
        cmd = ["patch", "-p1", "--forward", "--batch", "-i", str(MMCV_PATCH)] + (["--dry-run"] if dry_run else [])
    elif shutil.which("git"):
        cmd = ["git", "apply", "-p1"] + (["--check"] if dry_run else []) + [str(MMCV_PATCH)]
    else:
        raise StepFailed("neither patch nor git is installed: cannot apply requirements/mmcv-2.1.0.patch")
    check.sh(cmd, cwd=src, timeout=60)


def split_for_out(path: Path, out: Path) -> List[str]:
    """Copy ``path`` into ``out``, in parts of at most 15 MiB (``name.part00`` ...) when larger."""
    size = path.stat().st_size
    if size <= PART_BYTES:
        shutil.copy2(path, out / path.name)
        return [path.name]
    names = []
    with open(path, "rb") as fh:
        for i in range(-(-size // PART_BYTES)):
            name = f"{path.name}.part{i:02d}"
            (out / name).write_bytes(fh.read(PART_BYTES))
            names.append(name)
    return names


def step_mmcv(check: Check, build: bool = False) -> dict:
    sdist = GPU_DIR / f"mmcv-{MMCV_VERSION}.tar.gz"
    detail = {}
    if not build:
        probe = check.python_ok(mmcv_probe_code(check.device))
        if probe.returncode == 0:
            detail["present"] = probe.stdout.splitlines()[-1]
            if check.cpu and sdist.exists():
                with tempfile.TemporaryDirectory() as tmp:
                    with tarfile.open(sdist) as tar:
                        tar.extractall(tmp, filter="data")
                    apply_mmcv_patch(Path(tmp) / f"mmcv-{MMCV_VERSION}", check, dry_run=True)
                detail["patch"] = f"{MMCV_PATCH.name} applies to the carried sdist"
            return detail
        prebuilt = sorted(GPU_DIR.glob(f"mmcv-{MMCV_VERSION}-*.whl"))
        if prebuilt and not check.cpu:
            pip_install_target(check.python, prebuilt[-1:], check.site,
                               runner=lambda cmd, timeout=None: check.sh(cmd, timeout=timeout), timeout=120)
            probe = check.python_ok(mmcv_probe_code(check.device))
            if probe.returncode == 0:
                return {"installed": prebuilt[-1].name, "probe": probe.stdout.splitlines()[-1]}
            detail["prebuilt_failed"] = f"{prebuilt[-1].name}: {probe.stdout[-300:]}"
    if not sdist.exists():
        raise StepFailed(f"mmcv's ops do not run on {check.device} and {sdist} is missing (make gpu-wheels)")
    import torch

    env = dict(check.env)
    env.update(MMCV_WITH_OPS="1", MAX_JOBS=str(os.cpu_count() or 1))
    if check.cpu:
        env["FORCE_CUDA"] = "0"
        env["CUDA_VISIBLE_DEVICES"] = ""
    else:
        major, minor = torch.cuda.get_device_capability(0)
        env.update(FORCE_CUDA="1", TORCH_CUDA_ARCH_LIST=f"{major}.{minor}")
        detail["arch"] = env["TORCH_CUDA_ARCH_LIST"]
    build_site = GPU_DIR / "build"
    if build_site.is_dir():
        unpacked = Path(tempfile.mkdtemp(prefix="gpu-build-site-"))
        pip_install_target(check.python, sorted(build_site.glob("*.whl")), unpacked,
                           runner=lambda cmd, timeout=None: check.sh(cmd, timeout=timeout), timeout=120)
        env["PYTHONPATH"] = os.pathsep.join([str(unpacked), env["PYTHONPATH"]])
    work = Path(tempfile.mkdtemp(prefix="mmcv-build-"))
    with tarfile.open(sdist) as tar:
        tar.extractall(work, filter="data")
    src = work / f"mmcv-{MMCV_VERSION}"
    apply_mmcv_patch(src, check)
    t = time.monotonic()
    check.sh([check.python, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-build-isolation",
              "--no-deps", "-w", str(work / "dist"), "."], cwd=src, env=env)
    detail["build_s"] = round(time.monotonic() - t, 1)
    wheel = next((work / "dist").glob("mmcv-*.whl"))
    detail["wheel"] = {"name": wheel.name, "mib": round(wheel.stat().st_size / 2 ** 20, 1),
                       "in_out": split_for_out(wheel, check.out)}
    site = Path(tempfile.mkdtemp(prefix="gpu-mmcv-")) if check.cpu else check.site
    pip_install_target(check.python, [wheel], site,
                       runner=lambda cmd, timeout=None: check.sh(cmd, timeout=timeout), timeout=120)
    if not check.cpu:
        probe = check.python_ok(mmcv_probe_code(check.device))
        if probe.returncode != 0:
            raise StepFailed(f"the mmcv built here does not run its ops on the GPU: {probe.stdout[-300:]}")
        detail["probe"] = probe.stdout.splitlines()[-1]
    return detail


def step_rotplugin(check: Check) -> str:
    code = "import rotplugin._plane_copy, rotplugin.mm; print('rotplugin with its row copier')"
    if check.python_ok(code).returncode == 0:
        return "imports, row copier present"
    check.sh([check.python, "setup.py", "-q", "build_ext", "--inplace"], timeout=120)
    again = check.python_ok(code)
    if again.returncode != 0:
        raise StepFailed(f"rotplugin does not import: {again.stdout[-300:]}")
    return "row copier built in place"


def junit_counts(path: Path) -> dict:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    problems, skips = [], {}
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name')}"
        for kind in ("failure", "error"):
            for el in case.findall(kind):
                problems.append({"test": name, "kind": kind, "message": (el.get("message") or "")[:400]})
        for el in case.findall("skipped"):
            skips[name] = (el.get("message") or "")[:200]
    counts["problems"] = problems
    counts["skipped_tests"] = skips
    return counts


def step_tests(check: Check, k: Optional[str] = None) -> dict:
    xml = check.out / "cuda_tests.xml"
    cmd = [check.python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "cuda", "tests",
           f"--junitxml={xml}"] + (["-k", k] if k else [])
    run = check.sh(cmd, check=False)
    if not xml.exists():
        raise StepFailed(f"pytest wrote no report (exit {run.returncode}): {run.stdout[-300:]}")
    counts = junit_counts(xml)
    check.summary["tests"] = counts
    if counts["tests"] == 0 or counts["passed"] == 0:
        raise StepFailed(f"no test ran: {counts}")
    if counts["failures"] or counts["errors"] or run.returncode != 0:
        raise StepFailed(f"{counts['failures']} failed, {counts['errors']} errors of {counts['tests']}: "
                         + "; ".join(p["test"] for p in counts["problems"]))
    return {k: counts[k] for k in ("tests", "passed", "skipped")}


def step_timings(check: Check, quick: bool, sections: Optional[List[str]]) -> dict:
    path = check.out / "gpu_timings.json"
    cmd = [check.python, str(ROOT / "tools" / "benchmark_gpu.py"), "--device", check.device, "--json", str(path)]
    cmd += (["--quick"] if quick else []) + (["--sections", *sections] if sections else [])
    try:
        check.sh(cmd)
    finally:      # what a stopped benchmark measured is kept
        if path.exists():
            check.summary["timings"] = json.loads(path.read_text())
    return {k: v for k, v in check.summary.get("timings", {}).items() if k in ("device_name", "settings")}


def run(args) -> int:
    out = Path(args.out or os.environ.get("OUT") or ROOT / "work_dirs" / "gpu_check")
    check = Check(out, args.cpu, args.budget_s, Path(args.site))
    check.say(f"mode: {check.summary['mode']}; OUT {out}; budget {args.budget_s:.0f} s")
    steps = {"environment": lambda: step_environment(check), "wheels": lambda: step_wheels(check),
             "numpy_abi": lambda: step_numpy_abi(check), "mmcv": lambda: step_mmcv(check, args.build_mmcv),
             "rotplugin": lambda: step_rotplugin(check), "tests": lambda: step_tests(check, args.pytest_k),
             "timings": lambda: step_timings(check, args.quick, args.benchmark_sections)}
    for name in STEPS:
        if name in args.skip:
            check.summary["steps"][name] = {"status": "skipped", "detail": "--skip"}
            continue
        ok = check.step(name, steps[name])
        if not ok and name == "environment":
            break            # nothing after it can run
    statuses = {n: s["status"] for n, s in check.summary["steps"].items()}
    check.summary["passed"] = all(statuses.get(n) in ("ok",) or n in args.skip for n in STEPS)
    check.summary["seconds"] = round(time.monotonic() - check.t0, 1)
    check.save()
    check.say(f"{'PASSED' if check.summary['passed'] else 'NOT PASSED'}: {statuses}; summary {out / 'gpu_check.json'}")
    check.log.close()
    return 0 if check.summary["passed"] else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="download the wheels and the mmcv sdist into .gpu/ (needs network)")
    c.add_argument("--dest", default=str(GPU_DIR))
    r = sub.add_parser("run", help="the check (on the GPU machine), or with --cpu its dry run")
    r.add_argument("--out", help="default $OUT, else work_dirs/gpu_check")
    r.add_argument("--cpu", action="store_true", help="dry run: the same steps on the CPU with this Python")
    r.add_argument("--quick", action="store_true", help="small timings (tools/benchmark_gpu.py --quick)")
    r.add_argument("--budget-s", type=float, default=480.0, help="the whole run's wall-clock budget (default 480)")
    r.add_argument("--site", default="/tmp/rotplugin-gpu-site", help="where the carried wheels are installed")
    r.add_argument("--build-mmcv", action="store_true", help="build mmcv from the sdist even if its ops run")
    r.add_argument("--skip", nargs="+", choices=STEPS, default=[], help="steps not to run")
    r.add_argument("--pytest-k", help="only the CUDA tests matching this -k expression")
    r.add_argument("--benchmark-sections", nargs="+", choices=("train", "tta", "rotate"),
                   help="only these sections of tools/benchmark_gpu.py")
    args = p.parse_args(argv)
    if args.command == "collect":
        collect(Path(args.dest))
        return 0
    if not args.budget_s > 0:
        p.error("--budget-s must be positive")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
