"""The DOTA Task1 evaluation (rotplugin/data/dota_eval.py, tools/eval_dota.py) against hand-computed APs, an
independent loop written from the devkit's rules, mmrotate's eval_rbbox_map where both must agree, and bad input."""
import json
import math

import numpy as np
import pytest
from shapely.geometry import Polygon

from conftest import ROOT, load_tool, require_file

from rotplugin.data.dota_eval import (CountedWarnings, DOTAFormatError, evaluate_task1, load_ground_truth,
                                      quad_iou_pairs, read_task1_dir, voc_ap)
from rotplugin.data.dota_split import parse_dota_txt

REAL = ROOT.parent / "shared" / "data" / "dota_real"


def rect(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def gt(polys, labels, difficulties=None):
    n = len(polys)
    return dict(polys=np.asarray(polys, np.float64).reshape(n, 8), labels=list(labels),
                difficulties=np.asarray(difficulties if difficulties is not None else [0] * n, np.int64))


def ap_of(dets, gts, cls="car", **kw):
    return evaluate_task1({cls: dets}, gts, **kw)["classes"][cls]["ap"]


# ---------------------------------------------------------------------------------------------------------------
# hand-built cases with known APs
# ---------------------------------------------------------------------------------------------------------------
def test_duplicates_are_false_positives_voc07_and_area():
    gts = {"a": gt([rect(0, 0, 10, 10), rect(50, 50, 60, 60)], ["car", "car"])}
    dets = [("a", 0.9, rect(0, 0, 10, 10)), ("a", 0.8, rect(0, 0, 10, 10.5)), ("a", 0.7, rect(50, 50, 60, 60))]
    # tp 1 0 1: recall .5 .5 1, precision 1 .5 2/3
    assert ap_of(dets, gts) == pytest.approx((6 * 1.0 + 5 * 2 / 3) / 11, abs=1e-12)
    assert ap_of(dets, gts, metric="area") == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3, abs=1e-12)


def test_difficult_objects_are_neither_matched_nor_missed():
    gts = {"a": gt([rect(0, 0, 10, 10), rect(50, 50, 60, 60)], ["car", "car"], [1, 0])}
    dets = [("a", 0.9, rect(0, 0, 10, 10)), ("a", 0.8, rect(50, 50, 60, 60))]
    r = evaluate_task1({"car": dets}, gts)["classes"]["car"]
    assert r == dict(ap=pytest.approx(1.0), num_gts=1, num_dets=2)
    # the difficult object unmatched costs nothing either
    assert ap_of(dets[1:], gts) == pytest.approx(1.0)
    # a second detection on the difficult object is not a duplicate false positive
    assert ap_of(dets + [("a", 0.95, rect(0, 0, 10, 10))], gts) == pytest.approx(1.0)


def test_best_match_taken_gives_a_false_positive_without_fallback():
    # two objects side by side; the second detection's best IoU is with the already matched object
    gts = {"a": gt([rect(0, 0, 10, 10), rect(8, 0, 18, 10)], ["car", "car"])}
    dets = [("a", 0.9, rect(0, 0, 10, 10)), ("a", 0.8, rect(3, 0, 13, 10))]  # IoU 7/13 with 1st, 5/15 with 2nd
    # devkit: the second is a false positive (its best match is taken), recall stays 0.5
    assert ap_of(dets, gts) == pytest.approx(6 / 11, abs=1e-12)


def test_iou_threshold_is_strict():
    gts = {"a": gt([rect(0, 0, 10, 10)], ["car"])}
    half = rect(0, 0, 10, 5)  # IoU exactly 0.5
    assert ap_of([("a", 0.9, half)], gts) == 0.0
    assert ap_of([("a", 0.9, half)], gts, iou_thr=0.49) == pytest.approx(1.0)


def test_score_ties_fall_in_the_devkit_order():
    # equal scores: numpy's argsort(-scores) decides; for two entries it keeps input order
    gts = {"a": gt([rect(0, 0, 10, 10)], ["car"])}
    hit, miss = ("a", 0.5, rect(0, 0, 10, 10)), ("a", 0.5, rect(40, 40, 50, 50))
    assert ap_of([hit, miss], gts) == pytest.approx(1.0)           # tp first: precision 1 at recall 1
    assert ap_of([miss, hit], gts) == pytest.approx(0.5, abs=1e-12)  # fp first: precision 1/2 at recall 1


def test_polygon_iou_not_the_fitted_rbox_across_the_threshold():
    # an isosceles trapezoid: its minimum-area rectangle is 10 x 4 (area 40), the trapezoid has area 28
    trapezoid = [0, 0, 10, 0, 7, 4, 3, 4]
    det = rect(3, 0, 7, 4)  # lies inside the trapezoid: polygon IoU 16 / 28 = 0.571, rbox IoU 16 / 40 = 0.4
    assert quad_iou_pairs(np.array([det]), np.array([trapezoid]), [0], [0])[0] == pytest.approx(16 / 28)
    gts = {"a": gt([trapezoid], ["car"])}
    assert ap_of([("a", 0.9, det)], gts) == pytest.approx(1.0)
    mmrotate_ap = _mmrotate_ap([("a", 0.9, det)], gts, "car")
    assert mmrotate_ap == 0.0  # mmrotate's rbox of the trapezoid: IoU 0.4, a false positive


def test_empty_classes_and_images_without_detections():
    gts = {"a": gt([rect(0, 0, 10, 10)], ["car"]), "b": gt([rect(0, 0, 10, 10), rect(20, 20, 30, 30)],
                                                         ["car", "bus"])}
    res = evaluate_task1({"car": [("a", 0.9, rect(0, 0, 10, 10))], "boat": []}, gts)
    assert res["classes"]["car"] == dict(ap=pytest.approx(6 / 11), num_gts=2, num_dets=1)  # recall 1/2
    assert res["classes"]["bus"] == dict(ap=0.0, num_gts=1, num_dets=0)  # objects, no detections: in the mean
    assert "boat" not in res["classes"]                                    # neither objects nor detections
    assert res["mAP"] == pytest.approx((6 / 11 + 0.0) / 2)
    assert any("without any detection: 1" in w for w in res["warnings"])
    # detections of a class without objects: AP 0, reported, not in the mean
    res = evaluate_task1({"car": [("a", 0.9, rect(0, 0, 10, 10))], "boat": [("a", 0.3, rect(0, 0, 5, 5))]},
                         {"a": gt([rect(0, 0, 10, 10)], ["car"])})
    assert res["classes"]["boat"] == dict(ap=0.0, num_gts=0, num_dets=1)
    assert res["mAP"] == pytest.approx(1.0)


def test_non_convex_and_bow_tie_quadrilaterals():
    # a dart (simple, non-convex): the plain polygon IoU
    dart = [0, 0, 10, 5, 0, 10, 3, 5]
    square = rect(0, 0, 10, 10)
    want = Polygon(np.reshape(dart, (4, 2))).intersection(Polygon(np.reshape(square, (4, 2)))).area
    union = Polygon(np.reshape(dart, (4, 2))).area + 100 - want
    assert quad_iou_pairs(np.array([dart]), np.array([square]), [0], [0])[0] == pytest.approx(want / union)
    assert quad_iou_pairs(np.array([dart[2:] + dart[:2]]), np.array([square]), [0], [0])[0] == \
        pytest.approx(want / union)  # any starting corner
    # a bow-tie: (0,0) (10,0) (0,10) (10,10) has lobes y < x... its two triangles (area 25 each) of opposite sign;
    # the devkit: |area| = 0, intersection with the square = 25 - 25 = 0 -> IoU 0
    bowtie = [0, 0, 10, 0, 0, 10, 10, 10]
    assert quad_iou_pairs(np.array([bowtie]), np.array([square]), [0], [0])[0] == pytest.approx(0.0, abs=1e-12)
    # an unequal bow-tie: lobes of 32 (x < 8 side... ) computed by hand
    # (0,0) (10,0) (0,10) (10,2): edges (10,0)-(0,10) and (10,2)-(0,0) cross at X = (8.333.., 1.666..)
    bt = [0, 0, 10, 0, 0, 10, 10, 2]
    x = (25 / 3, 5 / 3)
    lobe_bottom = Polygon([(0, 0), (10, 0), x])          # triangle 0,0 - 10,0 - X
    lobe_other = Polygon([x, (0, 10), (10, 2)])           # triangle X - 0,10 - 10,2 ... opposite winding
    a1, a2 = lobe_bottom.area, lobe_other.area
    sq = Polygon([(0, 0), (10, 0), (10, 10), (0, 10)])
    inter = abs(sq.intersection(lobe_bottom).area - sq.intersection(lobe_other).area)
    area = abs(a1 - a2)
    assert quad_iou_pairs(np.array([bt]), np.array([square]), [0], [0])[0] == \
        pytest.approx(inter / (area + 100 - inter))


# ---------------------------------------------------------------------------------------------------------------
# an independent loop, written from the devkit's rules, on random scenes
# ---------------------------------------------------------------------------------------------------------------
def reference_ap(dets, gts, cls, iou_thr=0.5, metric="voc07"):
    """The devkit's per-detection loop over shapely polygon IoUs (convex or simple polygons only)."""
    recs = {img: dict(p=[Polygon(np.reshape(p, (4, 2))) for p, l in zip(a["polys"], a["labels"]) if l == cls],
                      d=[bool(d) for d, l in zip(a["difficulties"], a["labels"]) if l == cls])
            for img, a in gts.items()}
    for r in recs.values():
        r["det"] = [False] * len(r["p"])
    npos = sum(sum(not d for d in r["d"]) for r in recs.values())
    conf = np.array([s for _, s, _ in dets])
    order = np.argsort(-conf)
    tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
    for k, i in enumerate(order):
        img, _, poly = dets[i]
        r = recs[img]
        bb = Polygon(np.reshape(poly, (4, 2)))
        ovmax, jmax = -math.inf, -1
        for j, g in enumerate(r["p"]):
            inter = bb.intersection(g).area
            o = inter / (bb.area + g.area - inter)
            if o > ovmax:
                ovmax, jmax = o, j
        if ovmax > iou_thr:
            if not r["d"][jmax]:
                if not r["det"][jmax]:
                    tp[k], r["det"][jmax] = 1, True
                else:
                    fp[k] = 1
        else:
            fp[k] = 1
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    return voc_ap(tp / max(npos, 1), tp / np.maximum(tp + fp, np.finfo(np.float64).eps), metric)


def random_scene(seed, n_img=6, n_obj=60, n_det=200, classes=("car", "bus"), rectangular=False):
    rng = np.random.default_rng(seed)

    def quads(n, c=None, size=None):
        c = rng.uniform(0, 200, (n, 2)) if c is None else c
        w, h = (rng.uniform(6, 30, n), rng.uniform(4, 20, n)) if size is None else size
        t = rng.uniform(-np.pi, np.pi, n)
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) / 2
        shape = corners[None] * np.stack([w, h], -1)[:, None]
        if not rectangular:  # convex, non-rectangular: move each corner a little
            shape = shape + rng.uniform(-0.15, 0.15, shape.shape) * np.minimum(w, h)[:, None, None]
        rot = np.stack([np.stack([np.cos(t), -np.sin(t)], -1), np.stack([np.sin(t), np.cos(t)], -1)], -2)
        return (c[:, None] + np.einsum("nij,nkj->nki", rot, shape)).reshape(n, 8), (c, w, h)

    gp, (c, w, h) = quads(n_obj)
    gi = rng.integers(0, n_img, n_obj)
    gl = rng.integers(0, len(classes), n_obj)
    gd = (rng.random(n_obj) < 0.15).astype(int)
    gts = {f"I{i}": gt(gp[gi == i], [classes[k] for k in gl[gi == i]], gd[gi == i]) for i in range(n_img)}
    k = rng.integers(0, n_obj, n_det // 2)  # near an object (duplicates among them), the rest anywhere
    dp1, _ = quads(len(k), c[k] + rng.normal(0, 2, (len(k), 2)), (w[k] * rng.uniform(0.8, 1.2, len(k)), h[k]))
    dp2, _ = quads(n_det - len(k))
    dp = np.concatenate([dp1, dp2])
    di = np.concatenate([gi[k], rng.integers(0, n_img, n_det - len(k))])
    dl = np.concatenate([gl[k], rng.integers(0, len(classes), n_det - len(k))])
    scores = np.round(rng.random(n_det), 2)  # rounded as mmrotate writes them: many ties
    dets = {c_: [(f"I{di[j]}", float(scores[j]), list(dp[j])) for j in range(n_det) if classes[dl[j]] == c_]
            for c_ in classes}
    return dets, gts


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("metric", ["voc07", "area"])
def test_equals_the_reference_loop_on_random_scenes(seed, metric):
    dets, gts = random_scene(seed)
    res = evaluate_task1(dets, gts, metric=metric)
    for cls in ("car", "bus"):
        assert res["classes"][cls]["ap"] == pytest.approx(reference_ap(dets[cls], gts, cls, metric=metric),
                                                          abs=1e-12)
        assert 0.05 < res["classes"][cls]["ap"] < 0.95  # a scene that tests something


def _mmrotate_ap(dets, gts, cls, iou_thr=0.5):
    """AP of mmrotate's eval_rbbox_map (rbox IoU of qbox2rbox ground truth, difficult as ignored) for one class."""
    import torch
    from mmrotate.evaluation.functional import eval_rbbox_map
    from mmrotate.structures.bbox import qbox2rbox

    from rotplugin.evaluation import in_process_pool

    def rb(polys):
        return qbox2rbox(torch.as_tensor(np.asarray(polys, np.float32).reshape(-1, 8))).numpy()

    det_results, anns = [], []
    for img, a in gts.items():
        mine = [(s, p) for i, s, p in dets if i == img]
        boxes = rb([p for _, p in mine]) if mine else np.zeros((0, 5), np.float32)
        det_results.append([np.hstack([boxes, np.array([[s] for s, _ in mine], np.float32).reshape(-1, 1)])])
        sel = np.array([lab == cls for lab in a["labels"]], bool)
        diff = a["difficulties"].astype(bool)
        anns.append(dict(bboxes=rb(a["polys"][sel & ~diff]), labels=np.zeros(int((sel & ~diff).sum()), np.int64),
                         bboxes_ignore=rb(a["polys"][sel & diff]),
                         labels_ignore=np.zeros(int((sel & diff).sum()), np.int64)))
    with in_process_pool():
        _, res = eval_rbbox_map(det_results, anns, iou_thr=iou_thr, use_07_metric=True, box_type="rbox",
                                dataset=[cls], logger="silent", nproc=1)
    return float(res[0]["ap"])


def test_agrees_with_mmrotate_on_rectangular_ground_truth():
    dets, gts = random_scene(5, n_img=4, n_obj=50, n_det=150, classes=("car",), rectangular=True)
    # distinct scores: mmrotate sorts within each image first, so ties could fall otherwise there
    dets = {"car": [(img, s + 1e-4 * k, p) for k, (img, s, p) in enumerate(dets["car"])]}
    ours = evaluate_task1(dets, gts)["classes"]["car"]["ap"]
    # mmrotate accumulates tp / fp in float32: equal to its rounding
    assert ours == pytest.approx(_mmrotate_ap(dets["car"], gts, "car"), abs=1e-6)
    assert 0.1 < ours < 0.9


# ---------------------------------------------------------------------------------------------------------------
# files, the tool and bad input
# ---------------------------------------------------------------------------------------------------------------
def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_real_labels_as_detections_score_one_and_the_json_format(tmp_path):
    labels = require_file(REAL / "labelTxt")
    lines = {}
    for f in sorted(labels.glob("*.txt")):
        a = parse_dota_txt(str(f))
        for p, lab in zip(a["polys"], a["labels"]):
            lines.setdefault(lab, []).append(f"{f.stem} 0.9 " + " ".join(f"{v:.1f}" for v in p))
    for lab, ls in lines.items():
        write(tmp_path / "res" / f"Task1_{lab}.txt", "\n".join(ls) + "\n")
    eval_dota = load_tool("eval_dota")
    assert eval_dota.main([str(tmp_path / "res"), str(labels), "--json", str(tmp_path / "r.json")]) == 0
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["mAP"] == pytest.approx(1.0) and res["metric"] == "voc07"
    assert set(res["classes"]) == {"small-vehicle", "large-vehicle", "ship", "harbor"}
    assert res["classes"]["ship"]["num_gts"] == sum(
        1 for d, lab in zip(parse_dota_txt(str(labels / "P0706.txt"))["difficulties"],
                            parse_dota_txt(str(labels / "P0706.txt"))["labels"]) if lab == "ship" and d == 0)
    assert res["devkit_mAP"] == pytest.approx(4 / 15)
    # an image set limits the images: P0706 alone has no vehicles; vehicle detections on other labelled images
    # are dropped and counted
    write(tmp_path / "set.txt", "P0706\n")
    assert eval_dota.main([str(tmp_path / "res"), str(labels), "--image-set", str(tmp_path / "set.txt"),
                           "--json", str(tmp_path / "s.json")]) == 0
    res = json.loads((tmp_path / "s.json").read_text())
    assert set(res["classes"]) == {"ship", "harbor"} and res["num_images"] == 1
    assert any("outside the image set dropped" in w for w in res["warnings"])


def test_bad_input_names_file_and_line(tmp_path, capsys):
    labels = tmp_path / "labelTxt"
    write(labels / "a.txt", "imagesource:GoogleEarth\ngsd:0.1\n0 0 10 0 10 10 0 10 plane 0\n1 2 3\n")
    res_dir = tmp_path / "res"
    write(res_dir / "Task1_plane.txt", "a 0.9 0 0 10 0 10 10 0 10\n")
    notes = CountedWarnings()
    notes_res = evaluate_task1(read_task1_dir(str(res_dir)), load_ground_truth(str(labels), notes=notes), notes=notes)
    assert notes_res["classes"]["plane"]["ap"] == pytest.approx(1.0)
    assert any("fewer than 9 fields skipped" in w and "a.txt:4" in w for w in notes_res["warnings"])

    eval_dota = load_tool("eval_dota")
    cases = {
        "a 0.9 0 0 10 0 10 10 0\n": "Task1_plane.txt:1: expected 10 fields",
        "a 0.9 0 0 10 0 nan 10 0 10\n": "Task1_plane.txt:1: score and coordinates must be finite",
        "a 0.9 0 0 10 0 10 10 0 10\nb 0.8 0 0 10 0 10 10 0 10\n": "image 'b' has no ground truth",
    }
    for text, msg in cases.items():
        write(res_dir / "Task1_plane.txt", text)
        assert eval_dota.main([str(res_dir), str(labels)]) == 2
        assert msg in capsys.readouterr().err
    write(res_dir / "Task1_plane.txt", "a 0.9 0 0 10 0 10 10 0 10\n")
    write(res_dir / "Task1_car.txt", "")
    assert eval_dota.main([str(res_dir), str(labels)]) == 2
    assert "Task1_car.txt: unknown class 'car'" in capsys.readouterr().err
    assert eval_dota.main([str(res_dir), str(labels), "--classes", "plane", "car"]) == 0  # an empty file: AP 0
    capsys.readouterr()
    write(labels / "a.txt", "0 0 10 0 10 nan 0 10 plane 0\n")
    assert eval_dota.main([str(res_dir), str(labels), "--classes", "plane", "car"]) == 2
    assert "a.txt:1: coordinates must be finite" in capsys.readouterr().err
    # objects of classes outside the list are ignored (as the devkit does) and counted
    write(labels / "a.txt", "0 0 10 0 10 10 0 10 plane 0\n0 0 5 0 5 5 0 5 boat 0\n")
    notes = CountedWarnings()
    res = evaluate_task1(read_task1_dir(str(res_dir), classes=["plane", "car"]),
                         load_ground_truth(str(labels), notes=notes), classes=["plane", "car"], notes=notes)
    assert set(res["classes"]) == {"plane"} and res["classes"]["plane"]["num_gts"] == 1  # car: nothing at all
    assert any("outside the class list ignored" in w and ": 1 (first: a: boat)" in w for w in res["warnings"])
    write(labels / "a.txt", "0 0 10 0 10 10 0 10 plane 0\n")
    write(tmp_path / "set.txt", "a\nzz\n")
    assert eval_dota.main([str(res_dir), str(labels), "--image-set", str(tmp_path / "set.txt"), "--classes", "any"]) \
        == 2
    err = capsys.readouterr().err
    assert "have no label file" in err and "zz" in err
    with pytest.raises(ValueError, match="metric"):
        evaluate_task1({}, {"a": gt([rect(0, 0, 1, 1)], ["car"])}, metric="coco")
    with pytest.raises(DOTAFormatError, match="detection 1 .*finite"):
        evaluate_task1({"car": [("a", float("nan"), rect(0, 0, 1, 1))]}, {"a": gt([rect(0, 0, 1, 1)], ["car"])})
