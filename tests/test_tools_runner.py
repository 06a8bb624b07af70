"""tools/test.py through mmengine's Runner on a small synthetic DOTA set: plain, feature TTA and image TTA, and
mmdet's own tools/test.py --tta on the same config."""
import os
import pickle
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, dota_test_dataloader, dota_train_dataloader, load_tool, save_config_and_random_weights

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
    cfg.tta_pipeline = cfg.test_dataloader.dataset.pipeline
    cfg.tta_model.update(score_thr=0.005, angles=[0, 180])   # the tool's --angles override these
    cfg.test_evaluator = dict(type="DOTAMetric", metric="mAP")
    config, ckpt = save_config_and_random_weights(cfg, tmp / "small_retina.py", tmp / "small.pth")
    return tmp, config, ckpt


def _direct_predictions(config, ckpt, wrappers):
    """``{name: {img_id: (boxes, scores, labels)}}`` computed without any tool: the detector of ``config`` with the
    weights of ``ckpt``, wrapped by each ``wrappers[name](detector, cfg)`` (``None``: the plain detector), on the
    config's test set."""
    from mmdet.structures.bbox import get_box_tensor
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate
    from mmrotate.registry import DATASETS, MODELS

    cfg = Config.fromfile(str(config))
    model = MODELS.build(cfg.model)
    model.load_state_dict(torch.load(str(ckpt), weights_only=True)["state_dict"])
    model.eval()
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    out = {}
    for name, wrap in wrappers.items():
        m = model if wrap is None else wrap(model, cfg)
        out[name] = {}
        for i in range(len(dataset)):
            with torch.no_grad():
                pred = m.test_step(pseudo_collate([dataset[i]]))[0]
            p = pred.pred_instances
            out[name][pred.img_id] = (get_box_tensor(p.bboxes), p.scores, p.labels)
    return out


@pytest.fixture(scope="module")
def reference(small_setup):
    """``{tta: {img_id: (boxes, scores, labels)}}``: the plain detector and the two TTA models, applied directly."""
    from rotplugin.models import FeatureRotationTTAModel, ImageRotationTTAModel

    _, config, ckpt = small_setup
    kw = dict(angles=[0, 90, 180, 270], score_thr=0.005)
    return _direct_predictions(config, ckpt, {"none": None,
                                              "feature": lambda m, cfg: FeatureRotationTTAModel(m, **kw),
                                              "image": lambda m, cfg: ImageRotationTTAModel(m, **kw)})


def _dumped(path):
    from mmdet.structures.bbox import get_box_tensor

    with open(path, "rb") as f:
        results = pickle.load(f)
    return {r["img_id"]: (get_box_tensor(r["pred_instances"]["bboxes"]), r["pred_instances"]["scores"],
                          r["pred_instances"]["labels"]) for r in results}


def _assert_same(got, want):
    assert set(got) == set(want)
    for img_id, (boxes, scores, labels) in want.items():
        b, s, lab = got[img_id]
        assert len(s) == len(scores) > 0
        assert torch.allclose(b, boxes, atol=1e-4) and torch.allclose(s, scores, atol=1e-6)
        assert torch.equal(lab, labels)


@pytest.mark.parametrize("tta", ["none", "feature", "image"])
def test_tools_test_with_tta(small_setup, reference, tta):
    main = load_tool("test").main

    tmp, config, ckpt = small_setup
    out = tmp / f"results_{tta}.pkl"
    args = [] if tta == "none" else ["--tta", tta, "--angles", "0", "90", "180", "270"]
    metrics = main([str(config), str(ckpt), *args, "--work-dir", str(tmp / f"work_{tta}"), "--out", str(out)])
    assert "dota/mAP" in metrics
    # the dumped predictions are those of the plain detector / the TTA model asked for, not of another one
    _assert_same(_dumped(out), reference[tta])
    if tta != "none":
        assert any(len(reference[tta][i][1]) != len(reference["none"][i][1]) for i in reference["none"])


def test_tools_test_tta_takes_the_configs_tta_model(small_setup):
    """``--tta`` without a value: the config's tta_model (feature TTA over 0° and 180°, score_thr 0.005)."""
    tool = load_tool("test")
    tmp, config, ckpt = small_setup
    cfg = tool.build_test_config(tool.parse_args([str(config), str(ckpt), "--tta"]))
    assert cfg.model.type == "FeatureRotationTTAModel" and cfg.model.angles == [0, 180]
    assert cfg.model.module.type == "mmdet.RetinaNet" and cfg.model.module.backbone.type == "EquivariantResNet"
    cfg = tool.build_test_config(tool.parse_args([str(config), str(ckpt), "--tta", "image", "--angles", "90"]))
    assert cfg.model.type == "ImageRotationTTAModel" and cfg.model.angles == [90.0] and cfg.model.score_thr == 0.005
    with pytest.raises(ValueError, match="add --tta"):
        tool.build_test_config(tool.parse_args([str(config), str(ckpt), "--angles", "90"]))
    cfg = tool.build_test_config(tool.parse_args([str(config), str(ckpt), "--tta", "feature", "--flips", "none",
                                                  "horizontal", "--scales", "0.5", "1", "--merge", "fusion"]))
    assert cfg.model.flips == ["none", "horizontal"] and cfg.model.scales == [0.5, 1.0]
    assert cfg.model["merge"] == "fusion" and cfg.model.angles == [0, 180]   # ConfigDict.merge is a method
    for bad, match in ((["--scales", "0"], "scales must be positive"), (["--flips", "sideways"], "unknown flips"),
                       (["--merge", "fusion"], "add --tta")):
        with pytest.raises((ValueError, SystemExit), match=match):
            tool.build_test_config(tool.parse_args([str(config), str(ckpt), *bad] +
                                                   ([] if "--merge" in bad else ["--tta"])))


def test_mmdet_tools_test_runs_our_feature_tta(small_setup, reference):
    """mmdet 3.x's own tools/test.py (shipped in the mmdet package) with --tta builds the config's tta_model
    around the detector and gives the feature-TTA predictions (here with the config's angles, 0° and 180°)."""
    import mmdet

    tool = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "tools", "test.py")
    assert os.path.isfile(tool), f"mmdet 3.3.0's wheel ships its tools; not found at {tool}"
    tmp, config, ckpt = small_setup
    out = tmp / "mmdet_tta.pkl"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    subprocess.run([sys.executable, tool, str(config), str(ckpt), "--tta", "--out", str(out),
                    "--work-dir", str(tmp / "mmdet_work")], check=True, cwd=str(tmp), env=env, capture_output=True)
    # what the TTA model of the config computes, built directly from tta_model
    from mmengine.config import Config
    from mmrotate.registry import MODELS

    assert Config.fromfile(str(config)).tta_model.type == "FeatureRotationTTAModel"
    want = _direct_predictions(config, ckpt, {"tta": lambda m, cfg: MODELS.build(dict(cfg.tta_model, module=m))})
    _assert_same(_dumped(out), want["tta"])


def test_tools_test_rejects_bad_angles(small_setup):
    main = load_tool("test").main

    tmp, config, ckpt = small_setup
    with pytest.raises(ValueError, match="angles not understood"):
        main([str(config), str(ckpt), "--tta", "feature", "--angles", "north", "--work-dir", str(tmp / "w")])


def test_tools_train_two_iterations_and_resume(small_setup):
    from mmengine.config import Config
    main = load_tool("train").main

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
    saved = torch.load(str(work / "iter_2.pth"), map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], before[k]) for k in saved)
    # a checkpoint written by the Runner (message hub inside) loads in tools/test.py with feature TTA
    test_main = load_tool("test").main

    metrics = test_main([str(config), str(work / "iter_3.pth"), "--tta", "feature", "--work-dir", str(tmp / "wt")])
    assert "dota/mAP" in metrics
