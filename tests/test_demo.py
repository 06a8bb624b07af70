"""`make demo` end to end at toy size: data, training, benchmark, pictures, report."""
import json

import numpy as np
import pytest
from conftest import load_tool


def test_demo_pipeline_writes_report(tmp_path):
    import cv2

    main = load_tool("demo").main

    out = tmp_path / "demo"
    assert main(["--out", str(out), "--train-images", "4", "--test-images", "2", "--size", "128", "--epochs", "1",
                 "--skip-equivariance"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["modes"]) == {"none", "image", "feature"}
    bench = json.loads((out / "benchmark" / "benchmark.json").read_text())
    for name, mode in report["modes"].items():
        # the report carries the benchmark's numbers; the mAP is the mean AP over the classes with ground truth
        assert mode["mAP"] == bench[name]["mAP"] and mode["per_class_AP"] == bench[name]["per_class_AP"]
        assert set(mode["per_class_AP"]) == set(bench[name]["num_gts"]) and mode["per_class_AP"]
        assert np.isclose(mode["mAP"], np.mean(list(mode["per_class_AP"].values())))
        assert mode["sec_per_img"] > 0 and sum(mode["time_split"].values()) == pytest.approx(mode["sec_per_img"])
    # views exact on the canvas: feature TTA scores every class like image TTA
    for cls, ap in report["modes"]["image"]["per_class_AP"].items():
        assert report["modes"]["feature"]["per_class_AP"][cls] == pytest.approx(ap, abs=1e-6), cls
    assert report["train"]["iterations"] == 1 and report["train"]["train_images"] == 4
    assert report["angles"] == [0.0, 90.0, 180.0, 270.0]
    # the best setting of the TTA grid, measured beside the three modes
    from rotplugin.apis.demo import DEMO_BEST_TTA
    assert report["best_tta"]["setting"] == DEMO_BEST_TTA and 0 <= report["best_tta"]["mAP"] <= 1
    assert "the best setting of tools/benchmark_tta_grid.py" in (out / "report.md").read_text()
    # the trained model's fields rotate passively on the canvas (float32 rounding only)
    assert all(level["max_relative_error"] < 1e-4 for level in report["fields"]["levels"])
    pictures = [report["pictures"]["benchmark"], *report["pictures"]["detections"]]
    pictures += ["fields/" + p for p in report["pictures"]["fields"]]
    assert len(pictures) >= 1 + 2 + 2
    for rel in pictures:
        img = cv2.imread(str(out / rel))
        assert img is not None and img.std() > 5, f"{rel} is blank"
    text = (out / "report.md").read_text()
    assert "feature-rotation TTA" in text and "| no TTA |" in text
    # a second run keeps data, weights and benchmark entries
    mtime = (out / "model.pth").stat().st_mtime
    assert main(["--out", str(out), "--train-images", "4", "--test-images", "2", "--size", "128", "--epochs", "1",
                 "--skip-equivariance"]) == 0
    assert (out / "model.pth").stat().st_mtime == mtime
    assert np.isclose(json.loads((out / "report.json").read_text())["modes"]["none"]["mAP"],
                      report["modes"]["none"]["mAP"])
    # other settings are not "kept": two epochs train again; two TTA views reach the benchmark and the pictures
    assert main(["--out", str(out), "--train-images", "4", "--test-images", "2", "--size", "128", "--epochs", "2",
                 "--angles", "0", "180", "--skip-equivariance"]) == 0
    again = json.loads((out / "report.json").read_text())
    assert (out / "model.pth").stat().st_mtime != mtime and again["train"]["iterations"] == 2
    assert again["angles"] == [0.0, 180.0] and len(again["pictures"]["detections"]) == 2


def test_demo_trains_another_variant_on_shared_data(tmp_path):
    """``--config`` trains the D4 demo variant the same way, ``--data`` reuses one synthetic set."""
    main = load_tool("demo").main
    args = ["--train-images", "4", "--test-images", "2", "--size", "128", "--epochs", "1", "--skip-equivariance",
            "--data", str(tmp_path / "data")]
    config = "configs/demo/rotated-retinanet-le90_er18-d4_efpn_synthdota.py"
    assert main(["--out", str(tmp_path / "d4"), "--config", str(load_tool("demo").ROOT / config), *args]) == 0
    report = json.loads((tmp_path / "d4" / "report.json").read_text())
    assert report["train"]["settings"]["config"] == config and report["train"]["torch_threads"] == 2
    assert not (tmp_path / "d4" / "data").exists() and (tmp_path / "data" / "test" / "images").is_dir()
    assert "rotated-retinanet-le90_er18-d4_efpn_synthdota.py" in (tmp_path / "d4" / "report.md").read_text()
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "x"), "--config", str(tmp_path / "missing.py")])


def test_training_is_bitwise_repeatable_per_thread_count(tmp_path, capsys):
    """tools/check_determinism.py: two fresh processes with the same seed and threads train bitwise-equal weights;
    another seed does not (the probe can tell them apart)."""
    from rotplugin.data.dota_synth import generate_dataset

    generate_dataset(str(tmp_path / "data" / "train"), num_images=4, size=128, seed=0, workers=1, progress=False)
    tool = load_tool("check_determinism")
    out = tmp_path / "report.json"
    assert tool.main(["--iters", "2", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "runs"),
                      "--json", str(out), "--runs", "threads=1", "threads=1", "threads=1,seed=1"]) == 0
    rows = json.loads(out.read_text())
    assert rows[0]["sha256"] == rows[1]["sha256"] and rows[1]["max_weight_diff"] == 0.0
    assert rows[2]["sha256"] != rows[0]["sha256"] and rows[2]["max_weight_diff"] > 0
    with pytest.raises(SystemExit, match="not understood"):
        tool.main(["--data", str(tmp_path / "data"), "--runs", "cores=3"])
