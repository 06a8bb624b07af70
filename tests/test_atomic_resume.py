"""Interrupted runs lose nothing: atomic writes (rotplugin.io, AtomicDumpResults) and resumable benchmark JSONs
(tools/benchmark_tta.py, tools/benchmark_rotation.py, tools/benchmark_deploy.py, tools/check_equivariance.py), with
fake measurements."""
import json
import os
import pickle

import numpy as np
import pytest
import torch

from conftest import load_tool
from rotplugin.io import ResumableResults, write_json_atomic, write_pickle_atomic


@pytest.fixture
def tool_state():
    """The tools' main() set process-wide torch state (grad mode, threads): restore it for the next tests."""
    threads = torch.get_num_threads()
    with torch.enable_grad():
        yield
    torch.set_num_threads(threads)


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("interrupted while writing")


def test_atomic_writers_keep_the_old_file_on_failure(tmp_path):
    out = tmp_path / "sub" / "r.pkl"
    write_pickle_atomic(out, {"a": 1})
    with pytest.raises(RuntimeError, match="interrupted"):
        write_pickle_atomic(out, {"a": Unpicklable()})
    with open(out, "rb") as f:
        assert pickle.load(f) == {"a": 1}
    js = tmp_path / "r.json"
    write_json_atomic(js, {"x": 1})
    with pytest.raises(TypeError):
        write_json_atomic(js, {"x": object()})
    assert json.loads(js.read_text()) == {"x": 1}
    assert sorted(os.listdir(tmp_path)) == ["r.json", "sub"] and os.listdir(tmp_path / "sub") == ["r.pkl"]


def test_atomic_dump_results(tmp_path):
    from rotplugin.engine import AtomicDumpResults

    metric = AtomicDumpResults(out_file_path=str(tmp_path / "results.pkl"))
    assert metric.compute_metrics([{"img_id": "P0000"}]) == {}
    with open(tmp_path / "results.pkl", "rb") as f:
        assert pickle.load(f) == [{"img_id": "P0000"}]
    assert os.listdir(tmp_path) == ["results.pkl"]


def test_resumable_results(tmp_path):
    path = str(tmp_path / "bench.json")
    logs = []
    store = ResumableResults(path, log=logs.append)
    assert not store.done("a", {"size": 64})
    store.put("a", {"value": 1.0}, {"size": 64, "angles": (0, 90)})
    store.put("b", {"value": 2.0}, {"size": 64})
    assert json.loads(open(path).read())["a"] == {"value": 1.0, "settings": {"size": 64, "angles": [0, 90]}}

    again = ResumableResults(path, log=logs.append)
    assert again.done("a", {"size": 64, "angles": (0, 90)})            # tuples compare like the stored lists
    assert "skipped" in logs[-1]
    assert not again.done("a", {"size": 128, "angles": (0, 90)}) and "other settings" in logs[-1]
    again.put("a", {"value": 3.0}, {"size": 128})
    assert json.loads(open(path).read())["b"]["value"] == 2.0           # untouched entries are kept
    forced = ResumableResults(path, force=True, log=logs.append)
    assert not forced.done("b", {"size": 64}) and "--force" in logs[-1]
    assert not ResumableResults(None).done("a", {"size": 128})         # no file: nothing is done

    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON results file"):
        ResumableResults(str(tmp_path / "broken.json"))


def test_benchmark_tta_resumes(tmp_path, monkeypatch, capsys, tool_state):
    bench = load_tool("benchmark_tta")

    calls = []

    class Model:
        def data_preprocessor(self, data, training):
            return {"inputs": None}

        def extract_feat(self, inputs):
            return None

    def measure(model, data, angles, repeat, score_thr, view_batch=None):
        calls.append(len(angles))
        if len(angles) == 8 and os.environ.get("FAKE_INTERRUPT"):
            raise KeyboardInterrupt
        return {"views": len(angles), "backbone_neck_s": 1.0, "heads_per_view_s": 0.1, "feature_tta_s": 1.4,
                "image_tta_s": 4.4, "measured_ratio": 0.32, "ideal_ratio": 0.32, "num_dets": 3,
                "num_dets_image_tta": 3, "matched": 1.0, "max_box_diff_px": 0.0, "max_score_diff": 0.0}

    monkeypatch.setattr(bench, "build", lambda *a: Model())
    monkeypatch.setattr(bench, "measure", measure)
    monkeypatch.setattr(bench, "batch", lambda size: ({}, f"fake {size}"))
    out = str(tmp_path / "tta.json")
    args = ["--json", out, "--models", "rotated_retinanet", "--size", "64"]

    monkeypatch.setenv("FAKE_INTERRUPT", "1")
    with pytest.raises(KeyboardInterrupt):                              # interrupted in the 2nd measurement
        bench.main(args)
    assert calls == [4, 8]
    saved = json.loads(open(out).read())
    assert "rotated_retinanet" in saved and "rotated_retinanet_45" not in saved
    monkeypatch.delenv("FAKE_INTERRUPT")

    bench.main(args)                                                     # resumes: only the missing entry
    assert calls == [4, 8, 8]
    assert "rotated_retinanet: skipped" in capsys.readouterr().out
    bench.main(args)                                                     # all done: nothing measured
    assert calls == [4, 8, 8]
    bench.main(args + ["--force"])
    assert calls == [4, 8, 8, 4, 8]
    bench.main(args + ["--repeat", "3"])                                 # other settings: measured again
    saved = json.loads(open(out).read())
    assert calls[-2:] == [4, 8] and saved["rotated_retinanet"]["settings"]["repeat"] == 3


def test_check_equivariance_resumes(tmp_path, monkeypatch, capsys, tool_state):
    from rotplugin.equivariance import FeaturePyramid
    check = load_tool("check_equivariance")

    built, measured = [], []

    class Report:
        def table(self, title):
            return title

        def to_json(self):
            return {"errors": [0.0]}

    def measure(model, image, *args, **kwargs):
        measured.append(tuple(image.shape))
        return Report()

    def build(args):
        built.append(args.depth)
        return FeaturePyramid(lambda x: [x], [None], [1], 4)

    monkeypatch.setattr(check, "build_from_args", build)
    monkeypatch.setattr(check, "measure_equivariance", measure)
    monkeypatch.setattr(check, "load_image", lambda path, size, seed=0: (np.zeros((8, 8, 3), np.uint8), "fake"))
    out = str(tmp_path / "eq.json")
    check.main(["--json", out, "--size", "8"])
    assert len(built) == 1 and len(measured) == 2
    saved = json.loads(open(out).read())
    assert set(saved) >= {"canvas", "no_canvas"} and saved["canvas"]["settings"]["size"] == 8
    check.main(["--json", out, "--size", "8"])                           # nothing to do: no model is built
    assert len(built) == 1 and len(measured) == 2
    assert "canvas: skipped" in capsys.readouterr().out
    check.main(["--json", out, "--size", "8", "--force"])
    assert len(built) == 2 and len(measured) == 4


def test_benchmark_rotation_resumes(tmp_path, monkeypatch, capsys, tool_state):
    bench = load_tool("benchmark_rotation")

    calls = []

    def speed(quick):
        calls.append("speed")
        return {"rot90_over_clone": 5.0, "escnn_over_ours_90": 5.0, "escnn_over_ours_45": 60.0}

    def accuracy():
        calls.append("accuracy")
        if os.environ.get("FAKE_INTERRUPT"):
            raise KeyboardInterrupt
        return {"err45_features": 0.1, "err45_input": 0.05}

    monkeypatch.setattr(bench, "speed", speed)
    monkeypatch.setattr(bench, "accuracy", accuracy)
    out = str(tmp_path / "rot.json")
    monkeypatch.setenv("FAKE_INTERRUPT", "1")
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--json", out, "--quick"])
    monkeypatch.delenv("FAKE_INTERRUPT")
    assert json.loads(open(out).read())["rot90_over_clone"] == 5.0      # the finished part is on disk
    bench.main(["--json", out, "--quick"])
    assert calls == ["speed", "accuracy", "accuracy"]
    saved = json.loads(open(out).read())
    assert all(k in saved for k in bench.KEYS)                            # the flat summary of all five
    bench.main(["--json", out])                                           # not --quick: speed again
    assert calls == ["speed", "accuracy", "accuracy", "speed"]
    assert "accuracy: skipped" in capsys.readouterr().out


def test_benchmark_deploy_resumes_and_summarises(tmp_path, monkeypatch, capsys, tool_state):
    bench = load_tool("benchmark_deploy")
    prepared, ran = [], []
    fake = {"escnn": (3.0, 6.0), "pytorch": (1.05, 3.3), "onnxruntime": (1.0, 2.5), "stock_r50": (1.0, 3.0)}

    def prepare(name, folder, size, score_thr, threads, log=print):
        prepared.append(name)

    def run_child(variant, name, folder, size, repeat, threads):
        ran.append(variant)
        if variant == "onnxruntime" and os.environ.get("FAKE_INTERRUPT"):
            raise KeyboardInterrupt
        if variant == "onnxruntime_tta":
            return {"feature_tta_s": 7.0, "image_tta_s": 10.0, "peak_rss_mb": 900.0, "num_dets": 5,
                    "num_dets_image_tta": 5, "matched": 1.0}
        b, d = fake[variant]
        return {"backbone_neck_s": b, "detector_s": d, "peak_rss_mb": 1000.0 * b, "num_dets": 5}

    monkeypatch.setattr(bench, "prepare", prepare)
    monkeypatch.setattr(bench, "run_child", run_child)
    out = str(tmp_path / "deploy.json")
    args = ["--json", out, "--models", "rotated_retinanet", "--work", str(tmp_path / "work")]
    monkeypatch.setenv("FAKE_INTERRUPT", "1")
    with pytest.raises(KeyboardInterrupt):                              # interrupted in the 3rd variant
        bench.main(args)
    assert ran == ["escnn", "pytorch", "onnxruntime"] and prepared == ["rotated_retinanet"]
    assert sorted(json.loads(open(out).read())) == ["rotated_retinanet/escnn", "rotated_retinanet/pytorch"]
    monkeypatch.delenv("FAKE_INTERRUPT")
    bench.main(args)                                                     # resumes: only the missing variants
    assert ran[3:] == ["onnxruntime", "onnxruntime_tta", "stock_r50"]
    assert prepared == ["rotated_retinanet"]                            # the exports of the first run are reused
    summary = json.loads(open(out).read())["summary"]["rotated_retinanet"]
    assert summary["pytorch_over_stock_r50"]["backbone_neck"] == pytest.approx(1.05)
    assert not summary["pytorch_over_stock_r50"]["met"]                 # the detector: 3.3 / 3.0 > 1.05
    assert summary["onnxruntime_over_pytorch"]["detector"] == pytest.approx(2.5 / 3.3)
    assert summary["onnxruntime_over_pytorch"]["met"]
    assert "goal" not in summary["escnn_over_pytorch"]
    tta = summary["onnxruntime_tta"]                                     # B = 1.0, H = 1.5 of ONNX Runtime
    assert tta["ideal_ratio"] == pytest.approx((1.0 + 4 * 1.5) / (4 * 2.5))
    assert tta["measured_ratio"] == pytest.approx(0.7) and tta["met"]
    bench.main(args)                                                     # all done: nothing run again
    assert len(ran) == 6 and "skipped" in capsys.readouterr().out
    bench.main(args + ["--repeat", "1", "--variants", "pytorch"])        # other settings: measured again
    assert ran[-1] == "pytorch"
    with pytest.raises(SystemExit):
        bench.main(args + ["--size", "100"])                             # not a multiple of 32
    assert "multiple of 32" in capsys.readouterr().err


def test_image_to_tensor_matches_mmdet_preprocessing():
    """rotplugin.io.image_to_tensor (the tools' network input) normalises like mmdet's DetDataPreprocessor with the
    DOTA configs' mean, std and bgr_to_rgb; a grey or 4-channel image is refused by name."""
    import numpy as np
    import pytest
    import torch
    from mmdet.models.data_preprocessors import DetDataPreprocessor

    from rotplugin.io import DOTA_MEAN, DOTA_STD, image_to_tensor

    img = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    pre = DetDataPreprocessor(mean=list(DOTA_MEAN), std=list(DOTA_STD), bgr_to_rgb=True)
    expected = pre({"inputs": [torch.from_numpy(img).permute(2, 0, 1).contiguous()]}, False)["inputs"]
    assert torch.allclose(image_to_tensor(img), expected, atol=1e-6)
    assert not torch.allclose(image_to_tensor(img, bgr_to_rgb=False), expected, atol=1e-2)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) image, got shape \(7, 9\)"):
        image_to_tensor(img[..., 0])
