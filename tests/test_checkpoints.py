"""rotplugin.checkpoints: a checkpoint an mmengine Runner wrote loads with torch's safe (weights_only) unpickling once
rotplugin.mm is imported — through mmengine's load_checkpoint and upstream mmrotate's tools/test.py — and other
pickled objects are still refused. The loads run in fresh interpreters: torch's safe globals are per process."""
import argparse
import fractions
import importlib.util
import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, dota_test_dataloader, dota_train_dataloader

RETINA = ROOT / "configs/rotated_retinanet/rotated-retinanet-rbox-le90_er50-c8_efpn_1x_dota.py"
MULTIARRAY = "numpy._core.multiarray" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core.multiarray"
# what torch names in a Runner checkpoint when nothing is allowlisted
RUNNER_GLOBALS = {"mmengine.logging.history_buffer.HistoryBuffer", "builtins.getattr", "numpy.ndarray",
                  "numpy.dtype", f"{MULTIARRAY}._reconstruct", f"{MULTIARRAY}.scalar"}
UPSTREAM_TEST = Path(importlib.util.find_spec("mmrotate").origin).parent / ".mim" / "tools" / "test.py"


@pytest.fixture(scope="module")
def runner_checkpoint(tmp_path_factory):
    """``(config, checkpoint)``: a small detector trained by mmengine's Runner for one epoch of two iterations, with
    a validation and ``save_best`` (the message hub then holds train and val HistoryBuffers, ``eta``, ``best_score``)."""
    from mmengine.runner import Runner

    from rotplugin.data.dota_synth import generate_dataset
    from rotplugin.presets import load_config, shrink_detector_config

    tmp = tmp_path_factory.mktemp("checkpoints")
    generate_dataset(str(tmp / "data"), num_images=2, size=129, seed=0, progress=False)
    cfg = shrink_detector_config(load_config(str(RETINA)))
    cfg.model.test_cfg.update(score_thr=0.005, nms_pre=60, max_per_img=30)
    cfg.train_dataloader = dota_train_dataloader(tmp / "data", batch_size=1)
    cfg.val_dataloader = cfg.test_dataloader = dota_test_dataloader(tmp / "data")
    # in-process AP matching (mmrotate's DOTAMetric spawns a pool)
    cfg.val_evaluator = cfg.test_evaluator = dict(type="DOTAClassAPMetric", metric="mAP", silent=True)
    cfg.train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=1, val_interval=1)
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=1, save_best="auto")
    cfg.work_dir = str(tmp / "work")
    cfg.dump(str(tmp / "config.py"))
    Runner.from_cfg(cfg).train()
    return tmp / "config.py", tmp / "work" / "epoch_1.pth"


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=str(ROOT), timeout=300, **kwargs)


LOAD = """
import json, sys
import torch
from mmengine.runner import load_checkpoint
config, path, with_plugin = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
if with_plugin:
    import rotplugin.mm
    from mmengine.config import Config
    from mmrotate.registry import MODELS
    rotplugin.mm.register_all_modules()
    model = MODELS.build(Config.fromfile(config).model)
else:
    model = torch.nn.Linear(1, 1)
out = dict(unsafe=sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path)))
try:
    ckpt = load_checkpoint(model, path, map_location="cpu", strict=with_plugin, logger="silent")
except Exception as err:
    out.update(error=type(err).__name__ + ": " + str(err), plugin="rotplugin.mm" in sys.modules)
else:
    hub = ckpt["message_hub"]
    loss = hub["log_scalars"]["train/loss"]
    out.update(buffer=type(loss).__name__, mean=loss.statistics("mean"), eta=type(hub["runtime_info"]["eta"]).__name__,
               epoch=ckpt["meta"]["epoch"],
               same=all(torch.equal(v, ckpt["state_dict"][k]) for k, v in model.state_dict().items()))
print(json.dumps(out))
"""


def _load_in_subprocess(config, ckpt, with_plugin: bool) -> dict:
    proc = _run(["-c", LOAD, config, ckpt, int(with_plugin)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_runner_checkpoint_loads_with_weights_only_after_import(runner_checkpoint):
    config, ckpt = runner_checkpoint
    loaded = _load_in_subprocess(config, ckpt, with_plugin=True)
    assert "error" not in loaded, loaded["error"]
    assert loaded["unsafe"] == []  # everything it holds is allowlisted
    assert (loaded["buffer"], loaded["eta"], loaded["epoch"], loaded["same"]) == ("HistoryBuffer", "float64", 1, True)
    assert loaded["mean"] > 0  # the loss history, with its statistics methods


def test_runner_checkpoint_is_refused_without_rotplugin_mm(runner_checkpoint):
    from rotplugin.checkpoints import allow_runner_checkpoints

    config, ckpt = runner_checkpoint
    loaded = _load_in_subprocess(config, ckpt, with_plugin=False)
    assert loaded["plugin"] is False and "Weights only load failed" in loaded["error"], loaded
    assert "HistoryBuffer" in loaded["error"], loaded["error"]
    # exactly the globals the allowlist names (and, in this process, allowlisted)
    assert set(loaded["unsafe"]) == RUNNER_GLOBALS
    assert RUNNER_GLOBALS <= set(allow_runner_checkpoints())
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(ckpt)) == []


class _GetattrOfGetattr:
    """Pickles as ``getattr(getattr, '__self__')``: the builtins module, were getattr the real one."""

    def __reduce__(self):
        return getattr, (getattr, "__self__")


@pytest.mark.parametrize("obj", [
    argparse.Namespace(lr=0.1), fractions.Fraction(1, 3), np.random.RandomState(0), np.random.default_rng(0),
    np.zeros(2, dtype=np.float32), np.zeros(2, dtype=np.complex128), np.array([fractions.Fraction(1, 2)], dtype=object),
    _GetattrOfGetattr(),
], ids=["Namespace", "Fraction", "RandomState", "Generator", "float32", "complex", "object", "getattr"])
def test_other_objects_are_still_refused(obj):
    from rotplugin.checkpoints import allow_runner_checkpoints

    allow_runner_checkpoints()
    buf = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(1)}, "meta": {"extra": obj}}, buf)
    buf.seek(0)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(buf, map_location="cpu")


def test_allowlist_is_idempotent_and_reads_both_numpy_spellings():
    from mmengine.logging.history_buffer import HistoryBuffer

    from rotplugin.checkpoints import allow_runner_checkpoints

    first = allow_runner_checkpoints()
    count = len(torch.serialization.get_safe_globals())
    assert allow_runner_checkpoints() == first and len(torch.serialization.get_safe_globals()) == count
    assert {"numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.core.multiarray.scalar",
            "numpy._core.multiarray.scalar", "numpy.dtypes.Float64DType", "numpy.dtypes.Int64DType"} <= set(first)
    # a HistoryBuffer, an array and a scalar as numpy 1.x and numpy 2 pickle them (numpy.core... / numpy._core...)
    buffer = HistoryBuffer([1.0, 3.0], [1, 1])
    data = pickle.dumps({"h": buffer, "a": np.arange(3.0), "s": np.float64(2.5)}, protocol=2)
    for old, new in [(b"numpy._core.multiarray", b"numpy.core.multiarray"),
                     (b"numpy.core.multiarray", b"numpy._core.multiarray")]:
        spelled = data.replace(old, new)
        assert new + b"\n_reconstruct" in spelled and new + b"\nscalar" in spelled
        loaded = torch._weights_only_unpickler.load(io.BytesIO(spelled))  # what torch.load runs on data.pkl
        assert loaded["a"].tolist() == [0.0, 1.0, 2.0] and loaded["s"] == 2.5
        assert loaded["h"].statistics("mean") == 2.0 and loaded["h"].max() == 3.0


@pytest.mark.skipif(not UPSTREAM_TEST.is_file(), reason="the mmrotate wheel ships no upstream tools/test.py")
def test_upstream_mmrotate_tools_test_loads_runner_checkpoint(runner_checkpoint, tmp_path):
    """mmrotate's own tools/test.py (no rotplugin code but the config's custom_imports) tests the checkpoint."""
    config, ckpt = runner_checkpoint
    proc = _run([UPSTREAM_TEST, config, ckpt, "--work-dir", tmp_path / "work"])
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert f"Load checkpoint from {ckpt}" in log and "dota/mAP" in log, log[-3000:]
