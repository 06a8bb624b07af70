"""tools/test.py through mmengine's Runner on a small synthetic DOTA set: plain, feature TTA and image TTA."""
import pickle

import pytest
import torch

from conftest import ROOT

RETINA = ROOT / "configs/rotated_retinanet/rotated-retinanet-rbox-le90_er50-c8_efpn_1x_dota.py"


@pytest.fixture(scope="module")
def small_setup(tmp_path_factory):
    from mmrotate.registry import MODELS
    from rotplugin.data.dota_synth import generate_dataset
    from rotplugin.presets import load_config, shrink_detector_config

    tmp = tmp_path_factory.mktemp("runner")
    generate_dataset(str(tmp / "data"), num_images=2, size=129, seed=0, progress=False)
    cfg = shrink_detector_config(load_config(str(RETINA)))
    cfg.model.test_cfg.score_thr = 0.005
    pipeline = [
        dict(type="mmdet.LoadImageFromFile"),
        dict(type="mmdet.Resize", scale=(129, 129), keep_ratio=True),
        dict(type="mmdet.LoadAnnotations", with_bbox=True, box_type="qbox"),
        dict(type="ConvertBoxType", box_type_mapping=dict(gt_bboxes="rbox")),
        dict(type="mmdet.PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape",
                                                     "scale_factor")),
    ]
    cfg.test_dataloader = dict(
        batch_size=1, num_workers=0, persistent_workers=False, drop_last=False,
        sampler=dict(type="DefaultSampler", shuffle=False),
        dataset=dict(type="DOTADataset", data_root=str(tmp / "data"), ann_file="labelTxt/",
                     data_prefix=dict(img_path="images/"), test_mode=True, pipeline=pipeline))
    cfg.test_evaluator = dict(type="DOTAMetric", metric="mAP")
    config = tmp / "small_retina.py"
    cfg.dump(str(config))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    ckpt = tmp / "small.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {}}, str(ckpt))
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
