"""Two processes on CPU (torchrun, gloo) through tools/dist_train.sh: train, checkpoint, resume."""
import os
import subprocess

import pytest
import torch

from conftest import ROOT


@pytest.fixture(scope="module")
def train_config(tmp_path_factory):
    from rotplugin.data.dota_synth import generate_dataset
    from rotplugin.presets import load_config, shrink_detector_config

    tmp = tmp_path_factory.mktemp("dist")
    generate_dataset(str(tmp / "data"), num_images=4, size=129, seed=0, progress=False)
    cfg = shrink_detector_config(load_config(str(
        ROOT / "configs/rotated_retinanet/rotated-retinanet-rbox-le90_er50-c8_efpn_1x_dota.py")))
    pipeline = [dict(type="mmdet.LoadImageFromFile"),
                dict(type="mmdet.LoadAnnotations", with_bbox=True, box_type="qbox"),
                dict(type="ConvertBoxType", box_type_mapping=dict(gt_bboxes="rbox")),
                dict(type="mmdet.Resize", scale=(129, 129), keep_ratio=True), dict(type="mmdet.PackDetInputs")]
    cfg.train_dataloader = dict(
        batch_size=1, num_workers=0, persistent_workers=False, sampler=dict(type="DefaultSampler", shuffle=False),
        dataset=dict(type="DOTADataset", data_root=str(tmp / "data"), ann_file="labelTxt/",
                     data_prefix=dict(img_path="images/"), filter_cfg=dict(filter_empty_gt=True), pipeline=pipeline))
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=4, val_interval=1000)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.test_cfg = cfg.test_dataloader = cfg.test_evaluator = None
    cfg.param_scheduler = []
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=2, by_epoch=False)
    cfg.randomness = dict(seed=0)
    path = tmp / "small.py"
    cfg.dump(str(path))
    return tmp, path


def dist_train(config, work, port, *extra):
    env = dict(os.environ, PORT=str(port), PYTHON=os.environ.get("PYTHON", str(ROOT / ".venv/bin/python")))
    out = subprocess.run(["bash", str(ROOT / "tools/dist_train.sh"), str(config), "2", "--work-dir", str(work),
                          *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU (gloo) path")
def test_two_process_cpu_training_and_resume(train_config):
    tmp, config = train_config
    work = tmp / "work"
    log = dist_train(config, work, 29531)
    assert (work / "iter_4.pth").exists()
    assert "Distributed training: True" in log and "CPUDistributedDataParallel" in log
    first = torch.load(str(work / "iter_4.pth"), map_location="cpu", weights_only=False)
    log = dist_train(config, work, 29532, "--resume", "--cfg-options", "train_cfg.max_iters=6")
    assert "resumed epoch: 0, iter: 4" in log
    assert (work / "iter_6.pth").exists()
    last = torch.load(str(work / "iter_6.pth"), map_location="cpu", weights_only=False)
    assert first["meta"]["iter"] == 4 and last["meta"]["iter"] == 6
    changed = [k for k in first["state_dict"] if not torch.equal(first["state_dict"][k], last["state_dict"][k])]
    assert changed, "resumed training did not update any parameter"
