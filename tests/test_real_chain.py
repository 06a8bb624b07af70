"""The real-image chain as a user runs it: tools/dota_split.py -> tools/test.py --tta none|image|feature
--submission-dir (patches merged to full images) -> tools/eval_dota.py against the full-image labels.

Two 240x200 crops of real DOTA images (P0003: vehicles, P0706: ships) with their labels (objects of IoF >= 0.7,
as the splitter keeps them) are the "full images". They are split into 129 px patches (overlap 18 px in x, 58 px
in y) without labels, a tiny seeded Rotated RetinaNet predicts every patch (129 is an equivariant canvas: 1 mod the
largest stride), and mmrotate's DOTAMetric (merge_patches) shifts each patch's boxes by the offset in its name and
merges the patches of an image. Checked: every line of the Task1 files is a detection of one of the image's patches
moved by that patch's offset; feature and image TTA give the same merged lines; the evaluation of the Task1 files
and of the --out pickle (rotplugin.evaluation.results_to_task1) agree; each mode gets a complete evaluation.
"""
import json
import pickle
import re
import zipfile

import cv2
import numpy as np
import pytest
import torch

from rotplugin.data.dota_split import DOTA_V1_CLASSES

from conftest import ROOT, dota_test_dataloader, load_tool, require_file, save_config_and_random_weights

REAL = ROOT.parent / "shared" / "data" / "dota_real"
CROPS = {"P0003": (440, 440), "P0706": (800, 360)}  # top-left of 240x200 regions with 7 vehicles / 45 ships

RETINA = ROOT / "configs/rotated_retinanet/rotated-retinanet-rbox-le90_er50-c8_efpn_1x_dota.py"


@pytest.fixture(scope="module")
def patches(tmp_path_factory):
    from rotplugin.data.dota_split import crop_patch, format_dota_line, parse_dota_txt, split_dataset, \
        window_annotations
    from rotplugin.presets import load_config, shrink_detector_config

    tmp = tmp_path_factory.mktemp("submission")
    for image_id, (x, y) in CROPS.items():
        img = cv2.imread(str(require_file(REAL / "images" / f"{image_id}.png")), cv2.IMREAD_COLOR)
        window = (x, y, x + 240, y + 200)
        (tmp / "full" / "images").mkdir(parents=True, exist_ok=True)
        (tmp / "full" / "labelTxt").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp / "full" / "images" / f"{image_id}.png"), crop_patch(img, window))
        objects = window_annotations(parse_dota_txt(str(REAL / "labelTxt" / f"{image_id}.txt")), window)
        (tmp / "full" / "labelTxt" / f"{image_id}.txt").write_text("".join(
            format_dota_line(*o) + "\n" for o in zip(objects["polys"], objects["labels"], objects["difficulties"])))
    info = split_dataset(str(tmp / "full" / "images"), str(tmp / "split"), ann_dir=None, size=129, gap=18,
                         progress=False)
    assert info["patches"] == 8  # x starts 0, 111; y starts 0, 71
    assert not (tmp / "split" / "labelTxt").exists()  # a test set: images only

    cfg = shrink_detector_config(load_config(str(RETINA)))
    cfg.model.test_cfg.update(score_thr=0.005, nms_pre=100, max_per_img=30)
    # the config tests on a labelled split, as mmrotate's DOTA configs do; --submission-dir must drop the labels
    cfg.test_dataloader = dota_test_dataloader(tmp / "split")
    cfg.test_evaluator = dict(type="DOTAMetric", metric="mAP")
    # the TTA merge keeps random weights' low scores too (tools/test.py --tta keeps the config's tta_model settings)
    cfg.tta_model = dict(type="FeatureRotationTTAModel", score_thr=0.005, max_per_img=100)
    config, ckpt = save_config_and_random_weights(cfg, tmp / "small_retina.py", tmp / "small.pth")
    # spread the scores: initialised weights score every anchor ~0.01 (the focal-loss prior), so that float32
    # rounding would decide between tied boxes; with scores spread over (0, 1) the two TTA modes must agree
    state = torch.load(str(ckpt), weights_only=True)
    state["state_dict"]["bbox_head.retina_cls.weight"] *= 300.0
    torch.save(state, str(ckpt))
    return tmp, config, ckpt


def _patch_offset(name):
    m = re.fullmatch(r"(P\d{4})__129__(\d+)___(\d+)", name)
    assert m, name
    return m.group(1), int(m.group(2)), int(m.group(3))


@pytest.fixture(scope="module")
def submissions(patches):
    """``{mode: Task1 folder}`` of tools/test.py --tta none|image|feature --submission-dir (feature: also --out)."""
    main = load_tool("test").main
    tmp, config, ckpt = patches
    out = {}
    for mode in ("none", "image", "feature"):
        sub = tmp / f"Task1_{mode}"
        sub.mkdir()  # an empty folder is accepted
        extra = ["--out", str(tmp / "patches.pkl")] if mode == "feature" else []
        tta = [] if mode == "none" else ["--tta", mode, "--angles", "0", "90", "180", "270"]
        main([str(config), str(ckpt), *tta, "--submission-dir", str(sub), "--work-dir", str(tmp / "work"), *extra])
        out[mode] = sub
    return out


def _sorted(dets):
    """``[(image, score, coordinates (8,) array)]`` sorted by image, score, coordinates."""
    return [(i, s, np.asarray(p, np.float64)) for i, s, p in sorted(dets, key=lambda d: (d[0], d[1], tuple(d[2])))]


def _task1_lines(folder):
    """``{class: sorted [(image, score, coordinates (8,))]}`` of a Task1 folder."""
    out = {}
    for f in sorted(folder.glob("Task1_*.txt")):
        rows = [line.split() for line in f.read_text().splitlines()]
        out[f.stem[len("Task1_"):]] = _sorted((r[0], float(r[1]), [float(v) for v in r[2:]]) for r in rows)
    return out


def _same_detections(a, b, coord_tol, score_tol):
    """Every class has as many detections in ``a`` as in ``b``, each with a partner of the same image within the
    tolerances (a one-to-one pairing by nearest coordinates)."""
    assert sorted(a) == sorted(b)
    for cls in a:
        assert len(a[cls]) == len(b[cls]), cls
        left = list(b[cls])
        for image, score, poly in a[cls]:
            d = [np.abs(p - poly).max() if i == image else np.inf for i, _, p in left]
            k = int(np.argmin(d)) if d else -1
            assert k >= 0 and d[k] <= coord_tol and abs(left[k][1] - score) <= score_tol, (cls, image, score, poly)
            left.pop(k)


def test_feature_tta_submission_in_full_image_coordinates(patches, submissions):
    from mmrotate.structures.bbox import rbox2qbox

    tmp = patches[0]
    sub = submissions["feature"]
    classes = DOTA_V1_CLASSES
    assert sorted(p.name for p in sub.iterdir()) == sorted([f"Task1_{c}.txt" for c in classes] +
                                                           [f"{sub.name}.zip"])
    with zipfile.ZipFile(sub / f"{sub.name}.zip") as z:
        assert sorted(z.namelist()) == sorted(f"Task1_{c}.txt" for c in classes)
    assert not [p for p in tmp.iterdir() if p.name.startswith(".Task1")]  # no staging folder left

    # the patch-level TTA detections, shifted by each patch's offset: what the lines must come from
    with open(tmp / "patches.pkl", "rb") as f:
        results = pickle.load(f)
    assert len(results) == 8
    shifted = {}  # (image, class) -> list of (polygon (8,), score, offset)
    for r in results:
        image, x, y = _patch_offset(r["img_id"])
        pred = r["pred_instances"]
        boxes = pred["bboxes"].tensor if hasattr(pred["bboxes"], "tensor") else pred["bboxes"]
        boxes = boxes.clone().double()
        boxes[:, 0] += x
        boxes[:, 1] += y
        polys = rbox2qbox(boxes)
        for poly, score, label in zip(polys, pred["scores"], pred["labels"]):
            shifted.setdefault((image, classes[int(label)]), []).append((poly, float(score), (x, y)))
    assert sum(len(v) for v in shifted.values()) > 0

    lines, offsets_used, max_coord = 0, set(), 0.0
    for c in classes:
        for line in (sub / f"Task1_{c}.txt").read_text().splitlines():
            fields = line.split()
            assert len(fields) == 10, line
            image, score, poly = fields[0], float(fields[1]), torch.tensor([float(v) for v in fields[2:]])
            assert image in CROPS, line  # the full image's id, not a patch name
            assert 0.0 <= score <= 1.0
            candidates = [(o, s) for p, s, o in shifted.get((image, c), [])
                          if (p - poly.double()).abs().max() <= 0.006]
            assert candidates, f"{c}: {line} is no shifted patch detection"
            assert any(abs(s - score) <= 0.005 + 1e-6 for _, s in candidates), line
            offsets_used.update(o for o, _ in candidates)
            max_coord = max(max_coord, float(poly[0::2].max()), float(poly[1::2].max()))
            lines += 1
    assert lines > 0
    # boxes of the right / lower patches kept their offset: full-image coordinates beyond the first patch
    assert offsets_used - {(0, 0)}
    assert max_coord > 129
    # the merge removed duplicates across overlapping patches (class-wise rotated NMS, IoU 0.1; each patch's own
    # TTA merge already left no pair above that IoU)
    assert lines < sum(len(v) for v in shifted.values())


def test_feature_and_image_tta_give_the_same_merged_task1_lines(submissions):
    feature, image = _task1_lines(submissions["feature"]), _task1_lines(submissions["image"])
    assert sum(len(v) for v in feature.values()) > 20
    # the files hold 2 decimals: equal detections may round apart by one unit
    _same_detections(feature, image, coord_tol=0.0101, score_tol=0.0101)


def test_eval_dota_scores_every_mode_and_the_pickle_alike(patches, submissions):
    from rotplugin.data.dota_eval import evaluate_task1, load_ground_truth
    from rotplugin.evaluation import results_to_task1

    tmp = patches[0]
    labels = tmp / "full" / "labelTxt"
    eval_dota = load_tool("eval_dota")
    got = {}
    for mode, sub in submissions.items():
        assert eval_dota.main([str(sub), str(labels), "--json", str(tmp / f"{mode}.json")]) == 0
        got[mode] = json.loads((tmp / f"{mode}.json").read_text())
    gts = load_ground_truth(str(labels))
    want_gts = {}
    for ann in gts.values():
        for lab, d in zip(ann["labels"], ann["difficulties"]):
            want_gts[lab] = want_gts.get(lab, 0) + int(d == 0)
    assert want_gts["ship"] >= 30 and want_gts.get("small-vehicle", 0) + want_gts.get("large-vehicle", 0) >= 5
    for mode, res in got.items():
        assert res["metric"] == "voc07" and 0.0 <= res["mAP"] <= 1.0, mode
        assert {c: r["num_gts"] for c, r in res["classes"].items() if r["num_gts"]} == want_gts, mode
        assert sum(r["num_dets"] for r in res["classes"].values()) > 0, mode
    assert got["feature"]["mAP"] == pytest.approx(got["image"]["mAP"], abs=0.02)

    # the --out pickle through results_to_task1 (patches merged here): the same detections as mmrotate's merged
    # Task1 lines, with the scores unrounded
    with open(tmp / "patches.pkl", "rb") as f:
        results = pickle.load(f)
    dets = results_to_task1(results, DOTA_V1_CLASSES)
    from_pickle = {c: _sorted(v) for c, v in dets.items()}
    _same_detections(from_pickle, _task1_lines(submissions["feature"]), coord_tol=0.0051, score_tol=0.0051)
    res = evaluate_task1(dets, gts, classes="dota1.0")
    assert res["classes"].keys() == got["feature"]["classes"].keys()
    assert eval_dota.main([str(tmp / "patches.pkl"), str(labels), "--json", str(tmp / "pkl.json")]) == 0
    assert json.loads((tmp / "pkl.json").read_text())["mAP"] == pytest.approx(res["mAP"], abs=1e-12)


def test_submission_dir_refuses_a_non_empty_folder(patches):
    tool = load_tool("test")
    build_test_config = tool.build_test_config
    parse_args = tool.parse_args

    tmp, config, ckpt = patches
    full = tmp / "full_dir"
    full.mkdir()
    (full / "old.txt").write_text("x")
    with pytest.raises(ValueError, match="not an empty folder"):
        build_test_config(parse_args([str(config), str(ckpt), "--submission-dir", str(full),
                                      "--work-dir", str(tmp / "w")]))
    cfg = build_test_config(parse_args([str(config), str(ckpt), "--submission-dir", str(tmp / "new"),
                                        "--work-dir", str(tmp / "w")]))
    assert cfg.test_evaluator["merge_patches"] and cfg.test_evaluator["format_only"]
    assert cfg.test_dataloader.dataset.ann_file == ""
    assert not any("LoadAnnotations" in t["type"] for t in cfg.test_dataloader.dataset.pipeline)
