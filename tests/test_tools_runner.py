"""tools/test.py through mmengine's Runner on a small synthetic DOTA set: plain, feature TTA and image TTA."""
import pickle

import pytest
import torch

from conftest import ROOT, dota_test_dataloader, dota_train_dataloader, save_config_and_random_weights

RETINA = ROOT / "configs/rotated_retinanet/rotated-retinanet-rbox-le90_er50-c8_efpn_1x_dota.py"


@pytest.fixture(scope="module")
def small_setup(tmp_path_factory):
    from rotplugin.data.dota_synth import generate_dataset
    from rotplugin.presets import load_config, shrink_detector_config

    tmp = tmp_path_factory.mktemp("runner")
    generate_dataset(str(tmp / "data"), num_images=2, size=129, seed=0, progress=False)
    cfg = shrink_detector_config(load_config(str(RETINA)))
    cfg.model.test_cfg.score_thr = 0.005
    cfg.test_dataloader = dota_test_dataloader(tmp / "data")
    cfg.test_evaluator = dict(type="DOTAMetric", metric="mAP")
    config, ckpt = save_config_and_random_weights(cfg, tmp / "small_retina.py", tmp / "small.pth")
    return tmp, config, ckpt


@pytest.mark.parametrize("tta", ["none", "feature", "image"])
def test_tools_test_with_tta(small_setup, tta):
    from tools.test import main

    tmp, config, ckpt = small_setup
    out = tmp / f"results_{tta}.pkl"
    metrics = main([str(config), str(ckpt), "--tta", tta, "--angles", "0", "90", "180", "270",
                    "--work-dir", str(tmp / f"work_{tta}"), "--out", str(out)])
    assert "dota/mAP" in metrics and 0.0 <= metrics["dota/mAP"] <= 1.0
    with open(out, "rb") as f:
        results = pickle.load(f)
    assert len(results) == 2
    assert all(r["pred_instances"]["bboxes"].shape[-1] == 5 for r in results)
    if tta != "none":
        assert (tmp / f"work_{tta}").exists()


def test_tools_test_rejects_bad_angles(small_setup):
    from tools.test import main

    tmp, config, ckpt = small_setup
    with pytest.raises(ValueError, match="angles not understood"):
        main([str(config), str(ckpt), "--tta", "feature", "--angles", "north", "--work-dir", str(tmp / "w")])


def test_tools_train_two_iterations_and_resume(small_setup):
    from mmengine.config import Config
    from tools.train import main

    tmp, config, _ = small_setup
    cfg = Config.fromfile(str(config))
    cfg.train_dataloader = dota_train_dataloader(cfg.test_dataloader.dataset.data_root, batch_size=2)
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=2, val_interval=1000)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.param_scheduler = []
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=1, by_epoch=False)
    train_config = tmp / "small_retina_train.py"
    cfg.dump(str(train_config))
    work = tmp / "train_work"
    runner = main([str(train_config), "--work-dir", str(work)])
    assert runner.iter == 2 and (work / "iter_2.pth").exists()
    before = {k: v.clone() for k, v in runner.model.state_dict().items()}
    # resume from the last checkpoint and train to 3 iterations: the resumed weights are the saved ones
    runner = main([str(train_config), "--work-dir", str(work), "--resume", "--cfg-options",
                   "train_cfg.max_iters=3"])
    assert runner.iter == 3 and (work / "iter_3.pth").exists()
    saved = __import__("torch").load(str(work / "iter_2.pth"), map_location="cpu", weights_only=False)["state_dict"]
    assert all(torch.equal(saved[k], before[k]) for k in saved)
    # a checkpoint written by the Runner (message hub inside) loads in tools/test.py with feature TTA
    from tools.test import main as test_main

    metrics = test_main([str(config), str(work / "iter_3.pth"), "--tta", "feature", "--work-dir", str(tmp / "wt")])
    assert "dota/mAP" in metrics
