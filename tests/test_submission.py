"""DOTA test-set submission with feature TTA: tools/test.py --submission-dir on patches of full-size images.

Two synthetic 240x200 images are split into 129 px patches (overlap 18 px in x, 58 px in y) without labels, a tiny
random-weight Rotated RetinaNet predicts every patch with feature-rotation TTA, and mmrotate's DOTAMetric
(merge_patches) shifts each patch's boxes by the offset in its name and merges the patches of an image. Every line
of the Task1 files must be a TTA detection of one of the image's patches moved by that patch's offset.
"""
import pickle
import re
import zipfile

import pytest
import torch

from conftest import ROOT, dota_test_dataloader, load_tool, save_config_and_random_weights

RETINA = ROOT / "configs/rotated_retinanet/rotated-retinanet-rbox-le90_er50-c8_efpn_1x_dota.py"


@pytest.fixture(scope="module")
def patches(tmp_path_factory):
    from rotplugin.data.dota_split import split_dataset
    from rotplugin.data.dota_synth import generate_dataset
    from rotplugin.presets import load_config, shrink_detector_config

    tmp = tmp_path_factory.mktemp("submission")
    generate_dataset(str(tmp / "full"), num_images=2, size="240x200", seed=3, progress=False)
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
    return tmp, config, ckpt


def _patch_offset(name):
    m = re.fullmatch(r"(P\d{4})__129__(\d+)___(\d+)", name)
    assert m, name
    return m.group(1), int(m.group(2)), int(m.group(3))


def test_feature_tta_submission_in_full_image_coordinates(patches):
    from mmrotate.structures.bbox import rbox2qbox
    main = load_tool("test").main

    tmp, config, ckpt = patches
    sub = tmp / "Task1"
    sub.mkdir()  # an empty folder is accepted
    main([str(config), str(ckpt), "--tta", "feature", "--angles", "0", "90", "180", "270",
          "--submission-dir", str(sub), "--out", str(tmp / "patches.pkl"), "--work-dir", str(tmp / "work")])

    classes = ["plane", "baseball-diamond", "bridge", "ground-track-field", "small-vehicle", "large-vehicle", "ship",
               "tennis-court", "basketball-court", "storage-tank", "soccer-ball-field", "roundabout", "harbor",
               "swimming-pool", "helicopter"]
    assert sorted(p.name for p in sub.iterdir()) == sorted([f"Task1_{c}.txt" for c in classes] + ["Task1.zip"])
    with zipfile.ZipFile(sub / "Task1.zip") as z:
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
            assert image in ("P0000", "P0001"), line  # the full image's id, not a patch name
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
