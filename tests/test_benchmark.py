"""tools/benchmark.py / rotplugin.apis.benchmark: no TTA, image TTA, feature TTA on a tiny synthetic DOTA set;
the JSON, the PNG, resuming, bad inputs; DOTAClassAPMetric's per-class AP."""
import json
import shutil

import numpy as np
import pytest
import torch

from conftest import ROOT, load_tool, save_config_and_random_weights

RETINA = ROOT / "configs/rotated_retinanet/rotated-retinanet-rbox-le90_er50-c8_efpn_1x_dota.py"
ENTRY_KEYS = {"mAP", "per_class_AP", "num_gts", "sec_per_img", "time_split", "num_images", "config", "checkpoint",
              "data", "angles", "merge", "settings", "measured_at"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from rotplugin.data.dota_synth import generate_dataset
    from rotplugin.presets import load_config, shrink_detector_config

    tmp = tmp_path_factory.mktemp("benchmark")
    generate_dataset(str(tmp / "data"), num_images=2, size=129, seed=0, progress=False)
    cfg = shrink_detector_config(load_config(str(RETINA)))
    # random weights score near the 0.01 prior: keep some boxes, but few (rotated NMS on CPU)
    cfg.model.test_cfg.update(score_thr=0.005, nms_pre=60, max_per_img=30)
    # no Resize (as the demo config): the image stays 129 x 129, the canvas 129 (max_stride 128)
    cfg.test_dataloader.dataset.pipeline = [
        dict(type="mmdet.LoadImageFromFile"),
        dict(type="mmdet.PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape",
                                                     "scale_factor")),
    ]
    config, ckpt = save_config_and_random_weights(cfg, tmp / "small_retina.py", tmp / "small.pth")
    return tmp, config, ckpt


def _read(path):
    with open(path) as f:
        return json.load(f)


def test_tool_table_json_png_and_resume(setup, capsys):
    import cv2
    from rotplugin.apis.benchmark import run_benchmark
    main = load_tool("benchmark").main

    tmp, config, ckpt = setup
    out = tmp / "out"
    report = main([str(config), str(ckpt), "--data-root", str(tmp / "data"), "--out-dir", str(out), "--warmup", "0"])
    printed = capsys.readouterr().out
    # the table: a column per mode, mAP / per-class AP / time rows
    header = next(line for line in printed.splitlines() if line.split() == ["none", "image", "feature"])
    table = printed[printed.index(header):]
    for row in ("mAP", "s/img", "backbone+neck", "heads", "rotation", "merge", "images"):
        assert any(line.split()[0] == row or line.strip().startswith(row) for line in table.splitlines()), row
    assert report["skipped"] == []

    data = _read(out / "benchmark.json")
    assert set(data) == {"none", "image", "feature"}
    gts_classes = None
    for mode, entry in data.items():
        assert ENTRY_KEYS <= set(entry), (mode, ENTRY_KEYS - set(entry))
        assert entry["num_images"] == 2 and entry["settings"]["mode"] == mode
        assert 0.0 <= entry["mAP"] <= 1.0
        # the mAP is the mean over the classes with ground truth, which per_class_AP lists
        assert entry["per_class_AP"] and set(entry["per_class_AP"]) == set(entry["num_gts"])
        assert entry["mAP"] == pytest.approx(np.mean(list(entry["per_class_AP"].values())), abs=1e-9)
        gts_classes = gts_classes or entry["num_gts"]
        assert entry["num_gts"] == gts_classes  # the same ground truth for every mode
        split = entry["time_split"]
        assert set(split) == {"backbone_neck", "heads", "rotation", "merge", "other"}
        assert all(v >= 0 for v in split.values())
        assert sum(split.values()) == pytest.approx(entry["sec_per_img"], rel=1e-6)
        assert split["backbone_neck"] > 0 and split["heads"] > 0
        assert f"{entry['mAP']:.4f}" in table
    # the synthetic ground truth: the label files' objects, per class
    counts = {}
    for txt in (tmp / "data" / "labelTxt").glob("*.txt"):
        for line in txt.read_text().splitlines():
            counts[line.split()[8]] = counts.get(line.split()[8], 0) + 1
    assert gts_classes == counts
    assert data["none"]["angles"] is None and data["none"]["time_split"]["rotation"] == 0
    assert data["none"]["time_split"]["merge"] == 0
    for mode in ("image", "feature"):
        assert data[mode]["angles"] == [0.0, 90.0, 180.0, 270.0]
        assert data[mode]["time_split"]["rotation"] > 0 and data[mode]["time_split"]["merge"] > 0
        assert data[mode]["merge"] == {"score_thr": 0.005, "iou_thr": 0.1, "max_per_img": 30}

    png = cv2.imread(str(out / "benchmark.png"))
    assert png is not None and png.shape[0] > 200 and png.shape[1] > 400
    assert png.std() > 10 and (png < 128).mean() > 0.01  # bars and text, not a blank page

    # a second run skips every mode and leaves the entries as they were
    first = {m: e["measured_at"] for m, e in data.items()}
    report = run_benchmark(str(config), str(ckpt), str(tmp / "data"), out_dir=str(out), log=print)
    assert report["skipped"] == ["none", "image", "feature"]
    assert "skipped, already measured" in capsys.readouterr().out
    assert {m: e["measured_at"] for m, e in _read(out / "benchmark.json").items()} == first
    assert report["results"]["feature"]["mAP"] == data["feature"]["mAP"]

    # force re-measures what is asked; other angles re-measure the TTA mode; the rest stays
    report = run_benchmark(str(config), str(ckpt), str(tmp / "data"), modes=["none"], out_dir=str(out), force=True,
                           warmup=0)
    assert report["skipped"] == []
    report = run_benchmark(str(config), str(ckpt), str(tmp / "data"), modes=["feature"], angles=[0, 180],
                           out_dir=str(out), warmup=0)
    assert report["skipped"] == []
    again = _read(out / "benchmark.json")
    assert again["none"]["measured_at"] != first["none"] and again["feature"]["measured_at"] != first["feature"]
    assert again["image"]["measured_at"] == first["image"]
    assert again["feature"]["angles"] == [0.0, 180.0]
    # a changed checkpoint is a new setting, not a skipped one (and a warm-up image is measured after it)
    ckpt2 = tmp / "small_copy.pth"
    shutil.copy(ckpt, ckpt2)
    report = run_benchmark(str(config), str(ckpt2), str(tmp / "data"), modes=["none"], out_dir=str(out), warmup=1,
                           max_images=1)
    assert report["skipped"] == [] and report["results"]["none"]["num_images"] == 1
    assert report["results"]["none"]["time_split"]["backbone_neck"] > 0


def test_merges_from_one_pass_equal_separate_runs(setup, tmp_path):
    """``merges``: each TTA mode predicted once per image, merged by NMS and by fusion: the same mAP as a run per
    merge (``tta['merge']``); mirrored views on this C4 model count two backbone passes per image."""
    from rotplugin.apis.benchmark import run_benchmark

    tmp, config, ckpt = setup
    kw = dict(angles=[0, 90], max_images=3, warmup=0, log=print)
    both = run_benchmark(str(config), str(ckpt), str(tmp / "data"), modes=["feature"], merges=["nms", "fusion"],
                         tta=dict(flips=["none", "horizontal"]), out_dir=str(tmp_path / "both"), **kw)
    assert list(both["results"]) == ["feature+nms", "feature+fusion"]
    for merge in ("nms", "fusion"):
        one = run_benchmark(str(config), str(ckpt), str(tmp / "data"), modes=["feature"],
                            tta=dict(flips=["none", "horizontal"], merge=merge), **kw)["results"]["feature"]
        entry = both["results"][f"feature+{merge}"]
        assert entry["mAP"] == pytest.approx(one["mAP"], abs=1e-9) and entry["backbone_passes"] == 2.0
        assert entry["tta"] == dict(flips=["none", "horizontal"], merge=merge)
        assert sum(entry["time_split"].values()) == pytest.approx(entry["sec_per_img"])
    again = run_benchmark(str(config), str(ckpt), str(tmp / "data"), modes=["feature"], merges=["nms", "fusion"],
                          tta=dict(flips=["none", "horizontal"]), out_dir=str(tmp_path / "both"), **kw)
    assert again["skipped"] == ["feature+nms", "feature+fusion"]
    with pytest.raises(ValueError, match="unknown merge"):
        run_benchmark(str(config), str(ckpt), str(tmp / "data"), merges=["mean"], **kw)
    with pytest.raises(ValueError, match="unknown tta options"):
        run_benchmark(str(config), str(ckpt), str(tmp / "data"), tta=dict(views=3), **kw)


def test_plain_timed_model_is_the_detectors_prediction(setup):
    from mmengine.dataset import pseudo_collate
    from mmrotate.registry import DATASETS, MODELS
    from mmengine.runner import load_checkpoint
    from rotplugin.apis.benchmark import PlainTimedModel, _with_annotations
    from rotplugin.presets import load_config

    tmp, config, ckpt = setup
    cfg = load_config(str(config))
    detector = MODELS.build(cfg.model)
    load_checkpoint(detector, str(ckpt), map_location="cpu", strict=True, logger="silent")
    detector.eval()
    dataset = DATASETS.build(dict(type="DOTADataset", data_root=str(tmp / "data"), ann_file="labelTxt/",
                                  data_prefix=dict(img_path="images/"), test_mode=True,
                                  pipeline=_with_annotations(cfg.test_dataloader.dataset.pipeline)))
    data = pseudo_collate([dataset[0]])
    data["data_samples"][0].set_metainfo({"scale_factor": (1.0, 1.0)})  # what PlainTimedModel fills in
    timed = PlainTimedModel(detector)
    ours = timed.test_step(pseudo_collate([dataset[0]]))[0].pred_instances
    with torch.no_grad():
        ref = detector.test_step(data)[0].pred_instances
    assert len(ref) > 0
    def boxes(p):
        return p.bboxes.tensor if hasattr(p.bboxes, "tensor") else p.bboxes

    assert torch.equal(boxes(ours), boxes(ref)) and torch.equal(ours.scores, ref.scores)
    assert torch.equal(ours.labels, ref.labels)
    assert timed.timings["backbone_neck"] > 0 and timed.timings["heads"] > 0


def test_bad_inputs_are_refused_clearly(setup, tmp_path, monkeypatch):
    from rotplugin.apis.benchmark import run_benchmark
    main = load_tool("benchmark").main

    tmp, config, ckpt = setup
    data = str(tmp / "data")
    with pytest.raises(FileNotFoundError, match="config .* not found"):
        run_benchmark(str(tmp / "nope.py"), str(ckpt), data)
    with pytest.raises(FileNotFoundError, match="checkpoint .* not found"):
        run_benchmark(str(config), str(tmp / "nope.pth"), data)
    with pytest.raises(FileNotFoundError, match="data root .* does not exist"):
        run_benchmark(str(config), str(ckpt), str(tmp / "nowhere"))
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "labelTxt").mkdir()
    with pytest.raises(ValueError, match="no \\*.png images"):
        run_benchmark(str(config), str(ckpt), str(tmp_path / "empty"))
    shutil.copytree(tmp / "data" / "images", tmp_path / "nolabels" / "images")
    with pytest.raises(FileNotFoundError, match="needs labelTxt"):
        run_benchmark(str(config), str(ckpt), str(tmp_path / "nolabels"))
    shutil.copytree(tmp / "data", tmp_path / "badclass")
    (tmp_path / "badclass" / "labelTxt" / "P0000.txt").write_text("0 0 9 0 9 9 0 9 submarine 0\n")
    with pytest.raises(ValueError, match="unknown class 'submarine'"):
        run_benchmark(str(config), str(ckpt), str(tmp_path / "badclass"))
    with pytest.raises(ValueError, match="unknown mode 'rotated'"):
        run_benchmark(str(config), str(ckpt), data, modes=["none", "rotated"])
    with pytest.raises(ValueError, match="angles not understood"):
        run_benchmark(str(config), str(ckpt), data, angles="north")
    with pytest.raises(ValueError, match="max_images"):
        run_benchmark(str(config), str(ckpt), data, max_images=0)
    # a checkpoint of another model
    torch.save({"state_dict": {"backbone.foo": torch.zeros(1)}}, str(tmp_path / "other.pth"))
    with pytest.raises(ValueError, match="does not fit the model"):
        run_benchmark(str(config), str(tmp_path / "other.pth"), data, modes=["none"])
    # the tool: CONFIG without CHECKPOINT; no argument before `make demo`
    with pytest.raises(SystemExit):
        main([str(config)])
    monkeypatch.setattr(load_tool("benchmark"), "DEMO_WORK_DIR", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="run `make demo` first"):
        main([])


def _sample(boxes, labels, scores, gt_boxes, gt_labels):
    from mmrotate.structures.bbox import RotatedBoxes

    t = torch.tensor
    return dict(img_id="x", gt_instances=dict(bboxes=RotatedBoxes(t(gt_boxes, dtype=torch.float32)),
                                              labels=t(gt_labels)),
                ignored_instances=dict(bboxes=RotatedBoxes(torch.zeros(0, 5)), labels=t([], dtype=torch.long)),
                pred_instances=dict(bboxes=t(boxes, dtype=torch.float32), labels=t(labels),
                                    scores=t(scores, dtype=torch.float32)))


def test_class_ap_metric():
    from rotplugin.evaluation import DOTAClassAPMetric

    gt = [[20, 20, 10, 6, 0.3], [60, 50, 16, 16, 0.0], [90, 30, 12, 5, -0.5]]
    gt_labels = [0, 2, 2]
    metric = DOTAClassAPMetric(silent=True)
    metric.dataset_meta = dict(classes=("a", "b", "c"))
    # class a found; class c: one box found, one missed, one false positive ranked first
    pred = [gt[0], gt[1], [200, 200, 10, 10, 0.0]]
    metric.process({}, [_sample(pred, [0, 2, 2], [0.9, 0.5, 0.8], gt, gt_labels)])
    out = metric.evaluate(1)
    assert out["dota/AP_a"] == pytest.approx(1.0)
    assert 0.0 < out["dota/AP_c"] < 1.0
    assert "dota/AP_b" not in out  # no ground truth: not in the mean either
    assert out["dota/mAP"] == pytest.approx((out["dota/AP_a"] + out["dota/AP_c"]) / 2)
    assert metric.class_results["b"]["num_gts"] == 0 and metric.class_results["c"]["num_gts"] == 2
    assert metric.class_results["c"]["num_dets"] == 2


def test_tta_grid_summary_picks_the_best_feature_setting_within_the_baselines_time():
    from conftest import load_tool

    grid = load_tool("benchmark_tta_grid")
    row = lambda setting, merge, mode, m, s: dict(model="c4", setting=setting, merge=merge, mode=mode, mAP=m,
                                                  sec_per_img=s, backbone_passes=1)
    rows = [row("q4", "nms", "image", 0.60, 1.0), row("q4", "nms", "feature", 0.60, 0.5),
            row("q4", "fusion", "feature", 0.62, 0.52), row("s3q4", "fusion", "feature", 0.70, 1.5)]
    s = grid.summarise(rows)["c4"]
    assert s["best"]["setting"] == "q4" and s["best"]["merge"] == "fusion"       # s3q4 is better but slower
    assert s["best"]["gain"] == pytest.approx(0.02) and s["goal_met"]
    rows[2]["mAP"] = 0.605
    assert not grid.summarise(rows)["c4"]["goal_met"]                             # +0.5 points: below the goal
    assert "| c4 | q4 | fusion | feature | 0.6050 |" in grid.table(rows)
    # 45° views are orientation steps of C8 only: C4 / D4 models get the linear fibre rule
    assert grid.options("r8", 8) == {} and grid.options("r8", 4) == dict(fibre_interp="linear")
    assert grid.options("d4", 4) == dict(flips=["none", "horizontal"]) and grid.options("q4", None) == {}
