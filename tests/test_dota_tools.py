"""Tests of the DOTA data tools: synthetic generator (rotplugin.data.dota_synth, tools/make_synthetic_dota.py) and
image splitter (rotplugin.data.dota_split, tools/dota_split.py)."""
import math
import os
import re

import cv2
import numpy as np
import pytest
from conftest import DOTA_SAMPLES, load_tool
from rotplugin.data import dota_split as ds
from rotplugin.data import dota_synth as synth

SAMPLES = str(DOTA_SAMPLES)
DEMO_IMG = os.path.join(SAMPLES, "images", "dota_demo.jpg")
SAMPLE_TXT = os.path.join(SAMPLES, "labelTxt", "P2805__1024__0___0.txt")


def _files(d):
    return {n: open(os.path.join(d, n), "rb").read() for n in sorted(os.listdir(d))}


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    res = synth.generate_dataset(str(root), 3, 256, seed=7, progress=False)
    return root, res


# ---------------------------------------------------------------------------------------------------------------
# synthetic generator
# ---------------------------------------------------------------------------------------------------------------
def test_render_scene_objects_valid():
    for size, seed in ((256, 0), ((400, 300), 1), (512, 2)):
        img, objects = synth.render_scene(np.random.default_rng(seed), size)
        w, h = synth.parse_size(size)
        assert img.shape == (h, w, 3) and img.dtype == np.uint8
        assert objects
        for o in objects:
            assert o["label"] in synth.SYNTH_CLASSES
            p = o["poly"]
            assert p.shape == (4, 2)
            assert p.min() >= 0 and p[:, 0].max() <= w - 1 and p[:, 1].max() <= h - 1
            assert 0.0 <= o["angle"] < 360.0
            assert o["difficulty"] in (0, 1)
            assert np.array_equal(p, np.round(p, 2))
        # boxes do not overlap: centres farther apart than the sum of inscribed radii
        c = np.array([o["center"] for o in objects])
        r = np.array([min(o["length"], o["width"]) / 2 for o in objects])
        d = np.hypot(*(c[:, None] - c[None]).transpose(2, 0, 1))
        np.fill_diagonal(d, np.inf)
        assert (d >= r[:, None] + r[None] - 1e-6).all()


def test_generator_deterministic_per_seed(synth_root, tmp_path):
    root, _ = synth_root
    again = tmp_path / "again"
    synth.generate_dataset(str(again), 3, 256, seed=7, workers=2, progress=False)
    for sub in ("images", "labelTxt"):
        assert _files(root / sub) == _files(again / sub)
    other = tmp_path / "other"
    synth.generate_dataset(str(other), 1, 256, seed=8, progress=False)
    assert _files(other / "images")["P0000.png"] != _files(root / "images")["P0000.png"]
    with pytest.raises(FileExistsError):
        synth.generate_dataset(str(again), 1, 256, seed=7, progress=False)


def test_point_order_follows_heading():
    rng = np.random.default_rng(3)
    for cls in ("plane", "ship", "small-vehicle", "large-vehicle"):
        for angle in rng.uniform(0, 360, 5):
            img = np.zeros((200, 200, 3), np.uint8)
            poly = synth.draw_object(img, cls, 100.0, 100.0, 60.0, 24.0, angle, rng)
            front, rear = (poly[0] + poly[1]) / 2, (poly[2] + poly[3]) / 2
            d = front - rear
            heading = math.degrees(math.atan2(-d[1], d[0])) % 360
            assert abs((heading - angle + 180) % 360 - 180) < 0.05
            assert np.hypot(*d) == pytest.approx(60.0, abs=0.02)
            assert np.hypot(*(poly[1] - poly[0])) == pytest.approx(24.0, abs=0.02)
            # clockwise as displayed (y down): positive shoelace sum in image coordinates
            x, y = poly[:, 0], poly[:, 1]
            assert np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)) > 0


@pytest.mark.parametrize("cls", synth.SYNTH_CLASSES)
def test_box_is_tight_around_drawn_object(cls):
    rng = np.random.default_rng(5)
    for angle in (0.0, 27.0, 133.0, 250.0):
        magenta = np.array([255, 0, 255], np.uint8)  # a colour no object uses
        img = np.zeros((241, 241, 3), np.uint8) + magenta
        length, width = synth._sample_dims(rng, cls, 1.0)
        length *= 1.5 if cls == "small-vehicle" else 1.0
        width *= 1.5 if cls == "small-vehicle" else 1.0
        poly = synth.draw_object(img, cls, 120.0, 120.0, length, width, angle, rng)
        ys, xs = np.nonzero(np.abs(img.astype(int) - magenta).max(axis=2) > 100)  # mostly covered pixels
        # drawn pixels in the box frame (u along edge 4->1, v along edge 1->2, origin at corner 4)
        eu = (poly[0] - poly[3]) / np.hypot(*(poly[0] - poly[3]))
        ev = (poly[1] - poly[0]) / np.hypot(*(poly[1] - poly[0]))
        rel = np.stack([xs, ys], 1) - poly[3]
        u, v = rel @ eu, rel @ ev
        lu, lv = np.hypot(*(poly[0] - poly[3])), np.hypot(*(poly[1] - poly[0]))
        assert u.min() >= -1.0 and u.max() <= lu + 1.0 and v.min() >= -1.0 and v.max() <= lv + 1.0
        assert u.min() <= 1.5 and u.max() >= lu - 1.5 and v.min() <= 1.5 and v.max() >= lv - 1.5, (angle, poly)


def _rot180_difference(cls, angle, rng):
    img = np.full((161, 161, 3), 90, np.uint8)
    synth.draw_object(img, cls, 80.0, 80.0, 60.0 if cls != "small-vehicle" else 40.0,
                      {"plane": 60.0, "ship": 14.0, "small-vehicle": 19.0, "large-vehicle": 18.0,
                       "storage-tank": 60.0}[cls], angle, rng)
    crop = img.astype(np.float32)
    obj = np.abs(crop - 90).max(axis=2) > 10
    diff = np.abs(crop - crop[::-1, ::-1]).max(axis=2)
    return diff[obj | obj[::-1, ::-1]].mean()


def test_orientation_visible_except_tanks():
    rng = np.random.default_rng(11)
    for cls in ("plane", "ship", "small-vehicle", "large-vehicle"):
        for angle in (0.0, 37.0, 90.0, 200.0):
            assert _rot180_difference(cls, angle, rng) > 25.0, (cls, angle)
    assert _rot180_difference("storage-tank", 0.0, rng) < 5.0


def test_generated_labels_roundtrip_through_parser(synth_root):
    root, res = synth_root
    for name, objects in res["objects"].items():
        ann = ds.parse_dota_txt(str(root / "labelTxt" / f"{name}.txt"))
        assert ann["labels"] == [o["label"] for o in objects]
        np.testing.assert_array_equal(ann["polys"], np.array([o["poly"].ravel() for o in objects]))
        assert list(ann["difficulties"]) == [o["difficulty"] for o in objects]
        assert cv2.imread(str(root / "images" / f"{name}.png")).shape == (256, 256, 3)


def test_mmrotate_dotadataset_loads_generated(synth_root):
    pytest.importorskip("mmrotate")
    from mmrotate.datasets import DOTADataset

    root, res = synth_root
    dataset = DOTADataset(data_root=str(root), ann_file="labelTxt/", data_prefix=dict(img_path="images/"),
                          pipeline=[])
    classes = list(dataset.metainfo["classes"])
    assert len(dataset) == 3
    seen = set()
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        objects = res["objects"][info["img_id"]]
        seen.add(info["img_id"])
        assert os.path.isfile(info["img_path"])
        assert len(info["instances"]) == len(objects)
        for inst, o in zip(info["instances"], objects):
            np.testing.assert_allclose(np.asarray(inst["bbox"], np.float64), o["poly"].ravel(), atol=1e-4)
            assert classes[inst["bbox_label"]] == o["label"]
            assert inst["ignore_flag"] == 0
    assert seen == set(res["objects"])


def test_make_synthetic_tool_full_size(tmp_path, capsys):
    tool = load_tool("make_synthetic_dota")
    out = tmp_path / "full"
    assert tool.main([str(out), "--num-images", "1", "--size", "700x500", "--seed", "3", "--quiet"]) == 0
    assert "images/s" in capsys.readouterr().out
    assert cv2.imread(str(out / "images" / "P0000.png")).shape == (500, 700, 3)
    assert tool.main([str(out), "--num-images", "1", "--size", "700x500", "--seed", "3", "--quiet"]) == 2


# ---------------------------------------------------------------------------------------------------------------
# splitter: windows and names
# ---------------------------------------------------------------------------------------------------------------
def test_sliding_windows_demo_geometry():
    wins = ds.sliding_windows(1616, 1565, [1024], [200])
    assert sorted(set(wins[:, 0])) == [0, 592]  # step 824: 0, 824 -> moved back to 1616 - 1024
    assert sorted(set(wins[:, 1])) == [0, 541]
    assert len(wins) == 4 and (wins[:, 2:] - wins[:, :2] == 1024).all()
    # small image: one window, padded; long image: starts 0, 824, 1648, ..., last on the border
    assert ds.sliding_windows(500, 300, [1024], [200]).tolist() == [[0, 0, 1024, 1024]]
    xs = sorted(set(ds.sliding_windows(3000, 1024, [1024], [200])[:, 0]))
    assert xs == [0, 824, 1648, 1976]
    # multi-scale: window int(size / rate); mostly-padding large windows of a small image are dropped
    assert ds.windows_for_rates(1024, 500, [0.5, 1.0, 1.5]) == [(2048, 1000), (1024, 500), (682, 333)]
    wins = ds.sliding_windows(1500, 1300, [2048, 1024], [1000, 500])
    assert set((wins[:, 2] - wins[:, 0]).tolist()) == {1024}


def test_split_demo_image_without_labels(tmp_path):
    if not os.path.isfile(DEMO_IMG):
        pytest.skip(f"{DEMO_IMG} not available")
    img_dir = tmp_path / "in"
    img_dir.mkdir()
    os.symlink(DEMO_IMG, img_dir / "dota_demo.jpg")
    out = tmp_path / "out"
    res = ds.split_dataset(str(img_dir), str(out), size=1024, gap=200, progress=False)
    expected = sorted(f"dota_demo__1024__{x}___{y}" for x in (0, 592) for y in (0, 541))
    assert res["patch_names"] == expected and res["patches"] == 4
    assert sorted(os.listdir(out / "images")) == [n + ".png" for n in expected]
    assert not (out / "labelTxt").exists()
    full = cv2.imread(DEMO_IMG)
    assert full.shape[:2] == (1565, 1616)
    for n in expected:
        patch = cv2.imread(str(out / "images" / f"{n}.png"))
        x, y = (int(v) for v in re.search(r"__(\d+)___(\d+)$", n).groups())  # as DOTAMetric parses them
        assert patch.shape == (1024, 1024, 3)
        np.testing.assert_array_equal(patch, full[y:y + 1024, x:x + 1024])


def test_split_pads_small_images(tmp_path):
    img_dir = tmp_path / "in"
    img_dir.mkdir()
    img = np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    cv2.imwrite(str(img_dir / "small.png"), img)
    res = ds.split_dataset(str(img_dir), str(tmp_path / "out"), size=256, gap=56, pad_value=(1, 2, 3),
                           progress=False)
    assert res["patch_names"] == ["small__256__0___0", "small__256__44___0"]
    patch = cv2.imread(str(tmp_path / "out" / "images" / "small__256__44___0.png"))
    assert patch.shape == (256, 256, 3)
    np.testing.assert_array_equal(patch[:200], img[:, 44:300])
    assert (patch[200:] == np.array([1, 2, 3], np.uint8)).all()


# ---------------------------------------------------------------------------------------------------------------
# splitter: objects
# ---------------------------------------------------------------------------------------------------------------
def test_iof_of_clipped_polygons():
    win = np.array([[0, 0, 100, 100]])
    square = np.array([[90, 10, 110, 10, 110, 30, 90, 30]], np.float64)  # half inside
    assert ds.poly_window_iof(square, win)[0, 0] == pytest.approx(0.5)
    diamond = lambda cx, a: np.array([[cx + a, 50, cx, 50 + a, cx - a, 50, cx, 50 - a]], np.float64)
    t = 5.0  # corner of a diamond of half-diagonal 10 sticking out by t: IoF = 1 - t^2 / (2 * 10^2)
    assert ds.poly_window_iof(diamond(100 + t - 10, 10), win)[0, 0] == pytest.approx(1 - t * t / 200)
    assert ds.poly_window_iof(diamond(50, 10), win)[0, 0] == 1.0
    assert ds.poly_window_iof(diamond(200, 10), win)[0, 0] == 0.0
    # concave polygon (an L) half in: area by clipping stays exact
    ell = np.array([[80, 0, 120, 0, 120, 10, 90, 10, 90, 40, 80, 40]], np.float64)
    inside = 20 * 10 + 10 * 30
    assert ds.poly_window_iof(ell, win)[0, 0] == pytest.approx(inside / (40 * 10 + 10 * 30))


def _diamond(cx, cy, a):
    return [cx + a, cy, cx, cy + a, cx - a, cy, cx, cy - a]


def _write_labels(path, rows):
    with open(path, "w") as f:
        f.write("imagesource:GoogleEarth\ngsd:0.146343590398\n")
        for poly, cls, diff in rows:
            f.write(" ".join(f"{v:.4f}" for v in poly) + f" {cls} {diff}\n")


def test_split_iof_rule_truncation_and_shift(tmp_path):
    img_dir, ann_dir = tmp_path / "images", tmp_path / "labelTxt"
    img_dir.mkdir()
    ann_dir.mkdir()
    cv2.imwrite(str(img_dir / "P9000.png"), np.full((1000, 1200, 3), 77, np.uint8))
    a = 20.0
    t75, t65 = a * math.sqrt(0.25 * 2), a * math.sqrt(0.35 * 2)  # IoF 0.75 / 0.65 with window 0 (x <= 1024)
    rows = [
        (_diamond(1024 + t75 - a, 100, a), "plane", 0),        # IoF 0.75 in window x0=0 -> kept, difficulty 2
        (_diamond(1024 + t65 - a, 300, a), "ship", 0),         # IoF 0.65 -> not in window 0
        ([1000, 500, 1030, 500, 1030, 520, 1000, 520], "small-vehicle", 1),  # 24/30 = 0.8 -> kept, 2
        ([100, 600, 140, 600, 140, 640, 100, 640], "storage-tank", 1),   # only in window 0, whole
        ([170, 800, 190, 800, 190, 810, 170, 810], "large-vehicle", 0),  # x 170..190: IoF 0.7 with window 176
    ]
    _write_labels(ann_dir / "P9000.txt", rows)
    res = ds.split_dataset(str(img_dir), str(tmp_path / "out"), ann_dir=str(ann_dir), size=1024, gap=200,
                           progress=False)
    # windows: x 0 and 176 (1200 - 1024), y 0 only (1000 < 1024)
    assert res["patch_names"] == ["P9000__1024__0___0", "P9000__1024__176___0"]

    def read(name):
        return ds.parse_dota_txt(str(tmp_path / "out" / "labelTxt" / f"{name}.txt"))

    w0 = read("P9000__1024__0___0")
    assert w0["labels"] == ["plane", "small-vehicle", "storage-tank", "large-vehicle"]
    assert list(w0["difficulties"]) == [2, 2, 1, 0]
    np.testing.assert_allclose(w0["polys"][0], _diamond(1024 + t75 - a, 100, a), atol=1e-4)  # unclipped
    w1 = read("P9000__1024__176___0")
    assert w1["labels"] == ["plane", "ship", "small-vehicle", "large-vehicle"]
    assert list(w1["difficulties"]) == [0, 0, 1, 2]  # large-vehicle: IoF exactly 0.7 -> kept, truncated
    shift = np.tile([176.0, 0.0], 4)
    np.testing.assert_allclose(w1["polys"][2], np.array(rows[2][0], float) - shift, atol=1e-6)
    np.testing.assert_allclose(w1["polys"][1], np.array(rows[1][0], float) - shift, atol=1e-4)
    assert res["objects"] == 8

    # a lower threshold lets the IoF-0.65 ship into window 0
    res = ds.split_dataset(str(img_dir), str(tmp_path / "out2"), ann_dir=str(ann_dir), size=1024, gap=200,
                           iof_thr=0.6, progress=False)
    assert ds.parse_dota_txt(str(tmp_path / "out2" / "labelTxt" / "P9000__1024__0___0.txt"))["labels"] == [
        "plane", "ship", "small-vehicle", "storage-tank", "large-vehicle"]


def test_split_synthetic_full_images(tmp_path):
    src = tmp_path / "full"
    gen = synth.generate_dataset(str(src), 2, (1500, 1300), seed=5, progress=False)
    out = tmp_path / "split"
    res = ds.split_dataset(str(src / "images"), str(out), ann_dir=str(src / "labelTxt"), size=1024, gap=200,
                           workers=2, progress=False)
    wins = ds.sliding_windows(1500, 1300, [1024], [200])
    assert sorted(set(wins[:, 0])) == [0, 476] and sorted(set(wins[:, 1])) == [0, 276]
    shapely = None
    try:
        from shapely.geometry import Polygon as shapely  # independent IoF oracle where installed
    except ImportError:
        pass
    total = 0
    for name, objects in gen["objects"].items():
        polys = np.array([o["poly"].ravel() for o in objects])
        for x0, y0, x1, y1 in wins:
            pname = f"{name}__1024__{x0}___{y0}"
            inside = ((polys[:, 0::2] >= x0) & (polys[:, 0::2] <= x1) & (polys[:, 1::2] >= y0)
                      & (polys[:, 1::2] <= y1)).all(axis=1)
            outside = ((polys[:, 0::2] <= x0).all(1) | (polys[:, 0::2] >= x1).all(1)
                       | (polys[:, 1::2] <= y0).all(1) | (polys[:, 1::2] >= y1).all(1))
            if shapely is not None:
                box = shapely([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
                iof = np.array([shapely(p.reshape(4, 2)).intersection(box).area / shapely(p.reshape(4, 2)).area
                                for p in polys])
                keep = iof >= 0.7
            else:
                keep = inside.copy()
                partial = ~inside & ~outside
                keep[partial] = ds.poly_window_iof(polys[partial], [[x0, y0, x1, y1]])[:, 0] >= 0.7
            assert not (keep & outside).any() and keep[inside].all()
            if not keep.any():
                assert pname not in res["patch_names"]
                continue
            ann = ds.parse_dota_txt(str(out / "labelTxt" / f"{pname}.txt"))
            idx = np.nonzero(keep)[0]
            assert ann["labels"] == [objects[i]["label"] for i in idx]
            np.testing.assert_allclose(ann["polys"], polys[idx] - np.tile([x0, y0], 4), atol=1e-6)
            want = [objects[i]["difficulty"] if inside[i] else 2 for i in idx]
            assert list(ann["difficulties"]) == want
            assert cv2.imread(str(out / "images" / f"{pname}.png")).shape == (1024, 1024, 3)
            total += len(idx)
    assert res["objects"] == total
    # save_empty keeps every window
    res = ds.split_dataset(str(src / "images"), str(tmp_path / "all"), ann_dir=str(src / "labelTxt"),
                           size=1024, gap=200, save_empty=True, progress=False)
    assert res["patches"] == 2 * len(wins)


def test_split_multiscale_names(tmp_path):
    img_dir = tmp_path / "in"
    img_dir.mkdir()
    cv2.imwrite(str(img_dir / "m.png"), np.zeros((700, 1000, 3), np.uint8))
    res = ds.split_dataset(str(img_dir), str(tmp_path / "out"), size=512, gap=100, rates=[0.5, 1.0],
                           progress=False)
    # rate 0.5: one 1024 window (image share 0.67 > 0.6, padded); rate 1: 512 windows, step 412
    assert res["patch_names"] == sorted(
        ["m__1024__0___0"] + [f"m__512__{x}___{y}" for x in (0, 412, 488) for y in (0, 188)])
    assert cv2.imread(str(tmp_path / "out" / "images" / "m__1024__0___0.png")).shape == (1024, 1024, 3)


def test_split_tool_cli(tmp_path, capsys):
    tool = load_tool("dota_split")
    img_dir, ann_dir = tmp_path / "images", tmp_path / "labelTxt"
    img_dir.mkdir()
    ann_dir.mkdir()
    cv2.imwrite(str(img_dir / "a.png"), np.zeros((300, 300, 3), np.uint8))
    _write_labels(ann_dir / "a.txt", [([10, 10, 50, 10, 50, 30, 10, 30], "plane", 0)])
    argv = ["--img-dir", str(img_dir), "--ann-dir", str(ann_dir), "--out-dir", str(tmp_path / "out"),
            "--size", "256", "--gap", "56", "--workers", "1", "--no-progress"]
    assert tool.main(argv) == 0
    assert "1 objects" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "out" / "labelTxt")) == ["a__256__0___0.txt"]  # the x=44 ones are empty
    assert tool.main(argv) == 2  # output not empty
    assert "not empty" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# labels and bad input
# ---------------------------------------------------------------------------------------------------------------
def test_parse_real_sample_label():
    if not os.path.isfile(SAMPLE_TXT):
        pytest.skip(f"{SAMPLE_TXT} not available")
    ann = ds.parse_dota_txt(SAMPLE_TXT)
    assert ann["labels"] == ["plane"] * 4
    assert ann["polys"].shape == (4, 8)
    np.testing.assert_array_equal(ann["polys"][0], [359, 663, 369, 497, 543, 509, 531, 677])
    assert list(ann["difficulties"]) == [0, 0, 0, 0]


def test_parse_headers_and_optional_difficulty():
    ann = ds.parse_dota_lines(["imagesource:GoogleEarth", "gsd:null", "", "1 2 3 4 5 6 7 8 ship",
                               "1 2 3 4 5 6 7 8 plane 1"])
    assert ann["labels"] == ["ship", "plane"] and list(ann["difficulties"]) == [0, 1]


@pytest.mark.parametrize("line, why", [
    ("1 2 3 4 5 6 7 8", "expected 10 fields"),
    ("1 2 3 4 5 6 7 8 plane 0 extra", "expected 10 fields"),
    ("1 2 3 4 5 6 7 8 zeppelin 0", "unknown class 'zeppelin'"),
    ("1 2 3 x 5 6 7 8 plane 0", "finite numbers"),
    ("1 2 3 4 5 6 7 8 plane hard", "difficulty"),
])
def test_bad_label_lines_name_file_and_line(tmp_path, line, why):
    img_dir, ann_dir = tmp_path / "images", tmp_path / "labelTxt"
    img_dir.mkdir()
    ann_dir.mkdir()
    cv2.imwrite(str(img_dir / "bad.png"), np.zeros((64, 64, 3), np.uint8))
    (ann_dir / "bad.txt").write_text(f"gsd:0.1\n1 1 9 1 9 9 1 9 plane 0\n{line}\n")
    with pytest.raises(ds.DOTAFormatError) as e:
        ds.split_dataset(str(img_dir), str(tmp_path / "out"), ann_dir=str(ann_dir), size=64, gap=0, progress=False)
    assert f"{ann_dir / 'bad.txt'}:3:" in str(e.value) and why in str(e.value)
    assert not (tmp_path / "out").exists()  # checked before writing
    with pytest.warns(UserWarning, match=r"bad\.txt:3"):
        res = ds.split_dataset(str(img_dir), str(tmp_path / "out"), ann_dir=str(ann_dir), size=64, gap=0,
                               skip_bad=True, progress=False)
    assert res["objects"] == 1


def test_missing_image_and_empty_dir(tmp_path, capsys):
    img_dir, ann_dir = tmp_path / "images", tmp_path / "labelTxt"
    img_dir.mkdir()
    ann_dir.mkdir()
    with pytest.raises(ds.DOTAFormatError, match="no images"):
        ds.split_dataset(str(img_dir), str(tmp_path / "out"), progress=False)
    cv2.imwrite(str(img_dir / "a.png"), np.zeros((64, 64, 3), np.uint8))
    (ann_dir / "a.txt").write_text("")
    (ann_dir / "b.txt").write_text("1 1 9 1 9 9 1 9 plane 0\n")
    with pytest.raises(ds.DOTAFormatError, match=r"b\.txt: no image b\.\*"):
        ds.split_dataset(str(img_dir), str(tmp_path / "out"), ann_dir=str(ann_dir), progress=False)
    with pytest.raises(FileNotFoundError):
        ds.split_dataset(str(tmp_path / "nope"), str(tmp_path / "out"), progress=False)
    tool = load_tool("dota_split")
    assert tool.main(["--img-dir", str(img_dir), "--ann-dir", str(ann_dir), "--out-dir", str(tmp_path / "o")]) == 2
    assert "b.txt" in capsys.readouterr().err
