"""tools/gpu_check.py: its requirement bookkeeping, and its dry run end to end (the GPU run itself needs a GPU)."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT, load_tool


def _dist(site, name, *requires):
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", "Version: 1.0"] + [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(lines) + "\n")


def test_shipped_gpu_requirements_are_pinned_and_exemptions_give_reasons():
    gc = load_tool("gpu_check")
    reqs = gc.read_gpu_requirements()
    specs = gc.pinned(reqs["carry"])
    assert len(specs) == len(reqs["carry"]) and all("==" in s for s in specs)
    assert "escnn==1.0.11" in specs and "mmrotate-dev==1.0.1" in specs      # the CPU stack's versions
    assert {"torch", "numpy"} <= reqs["provided"]
    assert reqs["exempt"]["py3nj"] and reqs["exempt"]["opencv-python"]
    assert reqs["build"] == ["setuptools==80.9.0"]


def test_requirement_file_errors_name_the_line(tmp_path):
    gc = load_tool("gpu_check")
    bad = tmp_path / "gpu.txt"
    bad.write_text("[carry]\nmmdet\n[wheels]\nx\n")
    with pytest.raises(ValueError, match=r"gpu.txt:3: unknown section \[wheels\]"):
        gc.read_gpu_requirements(bad)
    bad.write_text("mmdet\n")
    with pytest.raises(ValueError, match="outside any section"):
        gc.read_gpu_requirements(bad)
    bad.write_text("[exempt]\npy3nj\n")
    with pytest.raises(ValueError, match="name: reason"):
        gc.read_gpu_requirements(bad)
    with pytest.raises(ValueError, match=r"no version of \['not-a-dist'\]"):
        gc.pinned(["not-a-dist"])


def test_missing_requirements_are_named_with_who_needs_them(tmp_path):
    gc = load_tool("gpu_check")
    site = tmp_path / "site"
    _dist(site, "alpha", "beta>=1", "Gamma_Lib", "delta; python_version < '3.0'", "eps; extra == 'docs'",
          "zeta; sys_platform == 'win32'", "numpy<2")
    _dist(site, "beta")
    assert gc.missing_requirements(site, provided={"numpy"}, exempt={}) == {"gamma-lib": ["alpha"]}
    assert gc.missing_requirements(site, provided={"numpy"}, exempt={"gamma-lib": "why"}) == {}
    # the markers are those of the GPU machine (CPython 3.12 on Linux), not of the Python running the check
    _dist(site, "eta", "theta; python_version >= '3.12'")
    assert "theta" in gc.missing_requirements(site, provided={"numpy", "gamma-lib"}, exempt={})


def test_two_versions_of_one_wheel_are_refused(tmp_path):
    gc = load_tool("gpu_check")
    names = ["mmdet-3.3.0-py3-none-any.whl", "mmdet-3.2.0-py3-none-any.whl", "lie_learn-0.0.2-cp312-x.whl"]
    assert gc.duplicate_dists([tmp_path / n for n in names]) == {"mmdet": names[:2]}


def test_large_files_come_back_in_parts_that_join_to_the_file(tmp_path, monkeypatch):
    gc = load_tool("gpu_check")
    monkeypatch.setattr(gc, "PART_BYTES", 1000)
    big = tmp_path / "mmcv-2.1.0-cp312-cp312-linux_x86_64.whl"
    payload = bytes(range(256)) * 10            # 2560 bytes: 3 parts
    big.write_bytes(payload)
    out = tmp_path / "out"
    out.mkdir()
    parts = gc.split_for_out(big, out)
    assert parts == [big.name + f".part0{i}" for i in range(3)]
    assert b"".join((out / p).read_bytes() for p in parts) == payload
    small = tmp_path / "small.whl"
    small.write_bytes(b"x" * 10)
    assert gc.split_for_out(small, out) == ["small.whl"]


def _dry_run(out, *extra):
    cmd = ["bash", str(ROOT / "tools" / "gpu_check.sh"), "run", "--cpu", "--quick", "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1200)


def test_dry_run_runs_every_step_and_writes_the_summary(tmp_path):
    """The same steps as on the GPU machine, on the CPU, with a few CUDA tests and the rotation timing."""
    run = _dry_run(tmp_path, "--pytest-k", "test_cuda_matches_cpu", "--benchmark-sections", "rotate")
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert run.returncode == 0, (summary, run.stdout[-3000:])
    assert summary["mode"].startswith("cpu dry run") and "no figure in it is a GPU figure" in summary["mode"]
    assert summary["passed"] is True
    assert list(summary["steps"]) == list(load_tool("gpu_check").STEPS)
    assert all(s["status"] == "ok" for s in summary["steps"].values()), summary["steps"]
    assert summary["environment"]["cuda_available"] is False
    tests = summary["tests"]
    assert tests["passed"] >= 4 and tests["failures"] == tests["errors"] == 0   # riroi + rotate_fields on "device"
    assert (tmp_path / "cuda_tests.xml").exists()
    assert summary["timings"]["rotate"]["rot90_s"] > 0 and summary["timings"]["settings"]["device"] == "cpu"
    log = (tmp_path / "gpu_check.log").read_text()
    assert "pytest" in log and "benchmark_gpu.py" in log


def test_dry_run_out_of_budget_still_writes_what_happened(tmp_path):
    run = _dry_run(tmp_path, "--budget-s", "3", "--skip", "timings")
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert run.returncode == 1 and summary["passed"] is False
    statuses = {n: s["status"] for n, s in summary["steps"].items()}
    assert "timed out" in statuses.values() or "skipped" in statuses.values(), statuses
    assert statuses["timings"] == "skipped" and summary["steps"]["timings"]["detail"] == "--skip"


def test_dry_run_refuses_a_bad_budget():
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), "run", "--cpu", "--budget-s", "0"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2 and "--budget-s must be positive" in run.stderr
