"""tools/benchmark_real.py / rotplugin.apis.real_benchmark without training: the held-out region geometry (crop
lines, rotated regions whose ground truth lands on the rotated objects), the evaluation path (ground truth as
detections scores AP 1, also rotated), the four models' configs and parameter counts, the run plan, bad input."""
import json
import math

import cv2
import numpy as np
import pytest

from conftest import ROOT, load_tool

from rotplugin.apis import real_benchmark as rb

BASE = str(ROOT / "configs/demo/rotated-retinanet-le90_er18-c4_efpn_synthdota.py")


def _rect(cx, cy, w, h, deg):
    """Corners (x, y) of a w x h rectangle turned by ``deg`` (image axes), flat (8,)."""
    t = math.radians(deg)
    u, v = np.array([math.cos(t), math.sin(t)]), np.array([-math.sin(t), math.cos(t)])
    c = np.array([cx, cy])
    pts = [c - u * w / 2 - v * h / 2, c + u * w / 2 - v * h / 2, c + u * w / 2 + v * h / 2, c - u * w / 2 + v * h / 2]
    return np.concatenate(pts)


def _scene():
    """A 131 x 200 dark image with four bright rotated rectangles and their labels."""
    polys = np.stack([_rect(40, 30, 40, 14, 10), _rect(150, 45, 30, 12, -35), _rect(90, 95, 50, 20, 60),
                      _rect(170, 110, 20, 10, 0)])
    img = np.full((131, 200, 3), 20, np.uint8)
    for p in polys:
        cv2.fillPoly(img, [np.round(p.reshape(4, 2)).astype(np.int32)], (240, 240, 240))
    ann = dict(polys=polys, labels=["ship", "small-vehicle", "large-vehicle", "ship"],
               difficulties=np.array([0, 0, 1, 0]))
    return img, ann


def _mean_inside(img, poly, shrink=0.6):
    """Mean grey value inside ``poly`` shrunk about its centre (away from the interpolated edges)."""
    pts = poly.reshape(4, 2)
    c = pts.mean(0)
    mask = np.zeros(img.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(c + (pts - c) * shrink).astype(np.int32)], 1)
    assert mask.sum() > 10
    return float(img[..., 0][mask > 0].mean())


@pytest.mark.parametrize("angle", [90, 270, 30, -45])
def test_rotated_region_ground_truth_lands_on_the_objects(angle):
    img, ann = _scene()
    out, rot = rb.rotate_region(img, ann, angle, pad_value=(20, 20, 20))
    assert rot["labels"] == ann["labels"] and list(rot["difficulties"]) == [0, 0, 1, 0]
    if angle % 90 == 0:   # exact: np.rot90, canvas W x H; a point (x, y) of the image goes to (y, W-1-x) at +90°
        assert out.shape[:2] == (200, 131)
        assert np.array_equal(out, np.rot90(img, angle // 90, axes=(0, 1)))
        if angle == 90:
            pts, got = ann["polys"].reshape(-1, 2), rot["polys"].reshape(-1, 2)
            assert np.allclose(got, np.stack([pts[:, 1], 199 - pts[:, 0]], 1))
    else:                 # the whole rotated image on a canvas of sides ≡ 1 (mod 64)
        assert all(n % rb.MAX_STRIDE == 1 for n in out.shape[:2])
        corners = np.array([[0, 0], [199, 0], [199, 130], [0, 130]], np.float64).reshape(1, 8)
        _, frame = rb.rotate_region(img, dict(polys=corners, labels=["ship"], difficulties=np.zeros(1)), angle)
        xy = frame["polys"].reshape(-1, 2)
        assert xy.min() >= -0.5 and xy[:, 0].max() <= out.shape[1] - 0.5 and xy[:, 1].max() <= out.shape[0] - 0.5
    for poly in rot["polys"]:
        assert _mean_inside(out, poly) > 200, "a rotated ground-truth polygon misses its object"
    # and the objects' area is where the polygons are: nothing bright outside them
    mask = np.zeros(out.shape[:2], np.uint8)
    for poly in rot["polys"]:
        pts = poly.reshape(4, 2)
        c = pts.mean(0)
        cv2.fillPoly(mask, [np.round(c + (pts - c) * 1.3).astype(np.int32)], 1)
    assert out[..., 0][mask == 0].max() < 60


def test_crop_region_cut_objects():
    img = np.zeros((100, 120, 3), np.uint8)
    polys = np.stack([_rect(30, 20, 20, 10, 0),      # above the line y = 50
                      _rect(60, 46, 20, 20, 0),      # 80 % above
                      _rect(90, 54, 20, 20, 0),      # 20 % above
                      _rect(3, 20, 16, 10, 0)])      # sticks out of the image's left border: not cut
    ann = dict(polys=polys, labels=["ship"] * 4, difficulties=np.array([0, 1, 0, 0]))
    top_img, top = rb.crop_region(img, ann, (0, 0, None, 50))
    assert top_img.shape[:2] == (50, 120)
    assert np.allclose(top["polys"], polys[[0, 1, 3]]) and list(top["difficulties"]) == [0, 2, 0]
    bottom_img, bottom = rb.crop_region(img, ann, (0, 50, None, None))
    assert bottom_img.shape[:2] == (50, 120) and list(bottom["difficulties"]) == [2]
    assert np.allclose(bottom["polys"], polys[2] - np.tile([0.0, 50.0], 4))
    padded = rb.pad_to_canvas(bottom_img)
    assert padded.shape[:2] == (65, 129) and (padded[50:, :, 0] == rb.PAD_BGR[0]).all()


def test_ground_truth_as_detections_scores_one():
    """Detections made of the ground truth (through the le90 boxes the detectors output, rbox_to_polygon) score AP 1
    on the region and on its rotated copies: polygons, box conversion and evaluation agree."""
    import torch
    from mmrotate.structures.bbox import qbox2rbox

    from rotplugin.boxes import rbox_to_polygon

    img, ann = _scene()
    ann = dict(ann, difficulties=np.zeros(4, np.int64))
    for angle in (0, 90, 30):
        out, rot = (img, ann) if angle == 0 else rb.rotate_region(img, ann, angle)
        boxes = qbox2rbox(torch.as_tensor(rot["polys"], dtype=torch.float32))
        polys = rbox_to_polygon(boxes).reshape(-1, 8).numpy()
        dets = {c: [] for c in rb.CLASSES}
        for poly, label in zip(polys, rot["labels"]):
            dets[label].append(("P0005", 0.9, poly.tolist()))
        res = rb._evaluate(dets, [("P0005", out, rot)])
        assert res["mAP"] == pytest.approx(1.0) and set(res["per_class_AP"]) == set(rb.CLASSES), angle


def test_configs_of_the_four_models_and_parameter_match():
    from mmrotate.registry import MODELS

    width_d, params_d, params_a = rb.narrowed_width(BASE)
    assert abs(params_d / params_a - 1) < 0.10, (width_d, params_d, params_a)
    cfgs, params = {}, {}
    for key in rb.MODEL_KEYS:
        spec = rb.MODEL_SPECS[key]
        cfgs[key] = rb.build_config(BASE, spec, 0, 600, 4, "/nonexistent/data", "/nonexistent/work",
                                    width=width_d if key == "d" else None)
        params[key] = rb.count_parameters(MODELS.build(cfgs[key].model))
    assert params["d"] == params_d and params["a"] == params_a
    assert params["b"] < params["a"] < params["c"]          # C8 shares more weights than C4; plain shares none
    for key, cfg in cfgs.items():   # everything but backbone and neck is the same
        for name in ("data_preprocessor", "bbox_head", "train_cfg", "test_cfg"):
            assert cfg.model[name] == cfgs["a"].model[name], (key, name)
        for name in ("train_pipeline", "param_scheduler", "optim_wrapper", "train_cfg"):
            assert cfg[name] == cfgs["a"][name], (key, name)
        assert cfg.train_dataloader.batch_size == 4 and cfg.train_dataloader.sampler.type == "InfiniteSampler"
        assert cfg.model.neck.out_channels == 64 and cfg.model.neck.num_outs == 4
    assert cfgs["a"].model.data_preprocessor.type == "EquivariantDetDataPreprocessor"
    assert cfgs["a"].model.data_preprocessor.max_stride == 64
    assert (cfgs["a"].model.backbone.orientation, cfgs["b"].model.backbone.orientation) == (4, 8)
    for key, width in (("c", 32), ("d", width_d)):
        bb = cfgs[key].model.backbone
        assert bb.type == "mmdet.ResNet" and bb.depth == 18 and (bb.base_channels, bb.stem_channels) == (width,) * 2
        assert bb.frozen_stages == -1 and bb.norm_eval is False and bb.init_cfg is None
        assert cfgs[key].model.neck.type == "mmdet.FPN" and cfgs[key].model.neck.in_channels[0] == width
    assert cfgs["c"].model.backbone.base_channels == cfgs["a"].model.backbone.base_channels
    types = [t["type"] for t in cfgs["a"].train_pipeline]
    assert "RandomRotate" in types and "mmdet.RandomFlip" in types
    assert cfgs["a"].randomness.seed == 0
    # the test-ready config each run writes: full resolution (no resize to the demo's 256²), TTA on the same pipeline
    test = rb.test_config(cfgs["a"], "/data/heldout")
    pipeline = test.test_dataloader.dataset.pipeline
    assert [t for t in pipeline if t["type"] == "mmdet.Resize"] == [dict(type="mmdet.Resize", scale_factor=1.0)]
    assert test.tta_pipeline == pipeline and test.tta_model.type == "FeatureRotationTTAModel"
    assert test.test_dataloader.dataset.data_root == "/data/heldout/" and test.model == cfgs["a"].model
    assert test.train_dataloader is None and cfgs["a"].train_dataloader is not None  # a copy


def test_run_plan():
    assert rb.plan_runs(rb.MODEL_KEYS, [0, 1]) == [("a", 0), ("c", 0), ("b", 0), ("d", 0), ("a", 1), ("c", 1)]
    assert rb.plan_runs(["d", "b"], [3]) == [("b", 3), ("d", 3)]
    with pytest.raises(ValueError, match="unknown model"):
        rb.plan_runs(["e"], [0])


def test_missing_data_is_named(tmp_path, capsys):
    main = load_tool("benchmark_real").main
    assert main(["--data-dir", str(tmp_path / "nowhere"), "--out-dir", str(tmp_path / "out")]) == 2
    assert "nowhere" in capsys.readouterr().err
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "labelTxt").mkdir()
    assert main(["--data-dir", str(tmp_path / "data"), "--out-dir", str(tmp_path / "out"), "--quick"]) == 2
    assert "P0003.png is missing" in capsys.readouterr().err


def _heldout_run(tmp_path, key="a"):
    """A benchmark_real-like output folder: ``runs/<key>_seed0`` (test-ready config.py + random weights, scores
    kept down to 0.005 so that random weights detect something, at most 20 per image) and ``data/heldout`` (the scene padded to its
    canvas, named P0005)."""
    import torch
    from mmrotate.registry import MODELS

    cfg = rb.build_config(BASE, rb.MODEL_SPECS[key], 0, 10, 2, "/nonexistent/data", str(tmp_path / "work"))
    cfg.model.test_cfg.update(score_thr=0.005, nms_pre=100, max_per_img=20)   # few boxes: a quick merge
    torch.manual_seed(0)
    run = tmp_path / "runs" / f"{key}_seed0"
    run.mkdir(parents=True)
    torch.save({"state_dict": MODELS.build(cfg.model).state_dict()}, str(run / "model.pth"))
    rb.test_config(cfg, tmp_path / "data" / "heldout").dump(str(run / "config.py"))
    img, ann = _scene()
    rb._write_set(tmp_path / "data" / "heldout", [("P0005", rb.pad_to_canvas(img), ann)])
    return cfg, run / "model.pth"


def test_evaluate_views_merges_from_one_pass_equal_separate_tta_runs(tmp_path):
    """evaluate_views (issue 16's grid on the real held-out regions): each mode's views predicted once and merged
    by NMS and by fusion give the detections of a TTA model built with that merge; backbone passes per view set;
    a plain model's feature TTA is marked not applicable; bad options are refused by name."""
    from rotplugin.models.tta import FeatureRotationTTAModel

    cfg, ckpt = _heldout_run(tmp_path)
    tta = dict(flips=["none", "horizontal"])
    res = rb.evaluate_views(cfg, ckpt, tmp_path / "data", [0, 90, 180, 270], tta, ["none", "image", "feature"],
                            ["nms", "fusion"], log=lambda *_: None)
    assert set(res) == {"none", "image+nms", "image+fusion", "feature+nms", "feature+fusion"}
    assert res["feature+nms"]["backbone_passes"] == 2      # C4: the mirrored views need their own pass
    assert res["image+nms"]["backbone_passes"] == 8
    detector, _ = rb._load_detector(cfg, ckpt)
    items = rb._load_set(tmp_path / "data" / "heldout")
    model = FeatureRotationTTAModel(detector, angles=[0, 90, 180, 270], **rb._merge_settings(cfg), **tta)
    shared, _ = rb._detect(model, items, ["nms", "fusion"])
    assert model.merge == "nms"                            # merged both ways, the model's own merge untouched
    for merge in ("nms", "fusion"):
        model.merge = merge
        alone, _ = rb._detect(model, items)
        assert sum(len(v) for v in alone[None].values()) > 0, merge          # random weights do detect
        assert alone[None] == shared[merge], merge
        assert rb._evaluate(alone[None], items)["mAP"] == res[f"feature+{merge}"]["mAP"]
    assert shared["nms"] != shared["fusion"]
    plain_cfg, plain_ckpt = _heldout_run(tmp_path / "plain", "c")
    plain = rb.evaluate_views(plain_cfg, plain_ckpt, tmp_path / "plain" / "data", modes=["feature"],
                              log=lambda *_: None)
    assert plain == {"feature+nms": dict(applicable=False, mAP=None, reason=rb._NOT_ROTATABLE)}
    for kwargs, match in ((dict(tta=dict(merge="fusion")), "unknown tta options"),
                          (dict(modes=["rot90"]), "modes"), (dict(merges=[]), "merges"),
                          (dict(merges=["wbf"]), "merge")):
        with pytest.raises(ValueError, match=match):
            rb.evaluate_views(cfg, ckpt, tmp_path / "data", **kwargs)


def test_tta_grid_tool_on_real_runs_resumes(tmp_path, monkeypatch):
    """tools/benchmark_tta_grid.py --real: the grid of a benchmark_real run on its held-out set, rows per view set,
    mode and merge, the table written; a rerun reads every entry back instead of measuring again."""
    grid = load_tool("benchmark_tta_grid")
    _heldout_run(tmp_path)
    argv = ["--real", str(tmp_path), "--runs", "a_seed0", "--settings", "q4", "--out", str(tmp_path / "grid")]
    assert grid.main(argv) == 0
    data = json.loads((tmp_path / "grid" / "grid_real.json").read_text())
    assert [(r["setting"], r["mode"], r["merge"]) for r in data["rows"]] == [
        ("none", "none", "-"), ("q4", "image", "nms"), ("q4", "image", "fusion"), ("q4", "feature", "nms"),
        ("q4", "feature", "fusion")]
    assert data["summary"]["a_seed0"]["baseline"]["mAP"] == data["rows"][1]["mAP"]
    assert "| a_seed0 | q4 | fusion | feature |" in (tmp_path / "grid" / "grid_real.md").read_text()

    def measure_again(*args, **kwargs):
        raise AssertionError("a rerun measured again")

    monkeypatch.setattr(rb, "evaluate_views", measure_again)
    assert grid.main(argv) == 0
    assert json.loads((tmp_path / "grid" / "grid_real.json").read_text())["rows"] == data["rows"]
