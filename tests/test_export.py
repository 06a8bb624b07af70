"""tools/export.py: a trained rotplugin detector as a stock mmrotate detector and as ONNX graphs.

References: torch's own conv-BN fusion (``torch.nn.utils.fusion.fuse_conv_bn_eval``) for the folding; mmdet's
``ResNet`` / ``FPN`` built from the exported config for the weight mapping; a subprocess in which importing escnn,
e2cnn or rotplugin raises for "stock mmrotate loads it" (mmdet's ``init_detector`` / ``inference_detector`` on a real
DOTA crop); ONNX Runtime against PyTorch for the graphs; :class:`FeatureRotationTTAModel` for the TTA graph's views.
"""
import json
import subprocess
import sys
import textwrap

import cv2
import pytest
import torch
from torch import nn

from rotplugin.boxes import match_detections

from conftest import ROOT, load_tool, require_file, save_config_and_random_weights

REAL = ROOT.parent / "shared" / "data" / "dota_real"
CONFIGS = {
    "rotated_retinanet": "configs/rotated_retinanet/rotated-retinanet-rbox-le90_er50-c8_efpn_1x_dota.py",
    "oriented_rcnn": "configs/oriented_rcnn/oriented-rcnn-le90_er50-c8_efpn_1x_dota.py",
    "rotated_fcos": "configs/rotated_fcos/rotated-fcos-hbox-le90_er50-c8_efpn_1x_dota.py",
    "demo": "configs/demo/rotated-retinanet-le90_er18-c4_efpn_synthdota.py",
    "redet": "configs/redet/redet-le90_er50-c8_efpn_1x_dota.py",
}
CLASSIFIERS = ("bbox_head.retina_cls", "bbox_head.conv_cls", "rpn_head.rpn_cls", "roi_head.bbox_head.fc_cls",
               "roi_head.bbox_head.0.fc_cls", "roi_head.bbox_head.1.fc_cls")
# box regressors: rescaled to deltas of std 0.3, so that boxes stay near their anchors / proposals (random ones
# span several canvases, and NMS between such boxes sits at the IoU threshold, where rounding decides)
REGRESSORS = ("bbox_head.retina_reg", "bbox_head.conv_reg", "rpn_head.rpn_reg", "roi_head.bbox_head.fc_reg",
              "roi_head.bbox_head.0.fc_reg", "roi_head.bbox_head.1.fc_reg")
SIZE = 256   # the test Resize: the crop goes on a 257² canvas (≡ 1 mod 64 and 128)
BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    BANNED = set(sys.argv[1].split(","))
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BANNED or name in BANNED:
                raise ImportError(f"{name} is blocked in this test")
    sys.meta_path.insert(0, Block())
""")


def _randomise_batch_norms(model, g):
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def test_fold_batch_norm_equals_torch_fusion():
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from rotplugin.deploy.stock import fold_batch_norm

    g = torch.Generator().manual_seed(0)
    conv, bn = nn.Conv2d(6, 10, 3, padding=1, bias=False), nn.BatchNorm2d(10, eps=1e-3)
    _randomise_batch_norms(bn, g)
    conv.eval(), bn.eval()
    w, b = fold_batch_norm(conv.weight.detach(), dict(bn.state_dict()), bn.eps)
    fused = fuse_conv_bn_eval(conv, bn)
    assert torch.allclose(w, fused.weight, rtol=1e-6, atol=1e-7)
    assert torch.allclose(b, fused.bias, rtol=1e-6, atol=1e-7)
    x = torch.randn(2, 6, 9, 9, generator=g)
    assert torch.allclose(nn.functional.conv2d(x, w, b, padding=1), bn(conv(x)), atol=1e-5)


@pytest.mark.parametrize("depth,orientation,flip,upsample,extra", [
    (18, 4, False, "bilinear", "on_input"), (50, 8, False, "nearest", False), (50, 4, True, "bilinear", "on_output")])
@pytest.mark.parametrize("fold_bn", [True, False])
def test_mmdet_resnet_and_fpn_carry_the_exported_weights(depth, orientation, flip, upsample, extra, fold_bn):
    from mmcv.cnn import fuse_conv_bn
    from mmrotate.registry import MODELS

    from rotplugin.deploy.stock import (stock_fpn_config, stock_fpn_state_dict, stock_resnet_config,
                                        stock_resnet_state_dict)
    from rotplugin.mm import register_all_modules

    register_all_modules()
    width = 16
    exp = 4 if depth == 50 else 1
    bcfg = dict(type="EquivariantResNet", depth=depth, orientation=orientation, flip=flip, stem_channels=width,
                base_channels=width, frozen_stages=1, norm_eval=True)
    ncfg = dict(type="EquivariantFPN", in_channels=[width * exp * 2 ** i for i in range(4)], out_channels=32,
                num_outs=5, orientation=orientation, flip=flip, upsample_mode=upsample,
                add_extra_convs=extra, start_level=1 if extra == "on_output" else 0)
    torch.manual_seed(0)
    backbone, neck = MODELS.build(bcfg), MODELS.build(ncfg)
    _randomise_batch_norms(backbone, torch.Generator().manual_seed(1))
    backbone.eval(), neck.eval()
    sb, sn = MODELS.build(stock_resnet_config(bcfg)), MODELS.build(stock_fpn_config(ncfg))
    assert type(sb).__name__ == "ResNet" and type(sn).__name__ == "FPN"
    sb.load_state_dict(stock_resnet_state_dict(backbone, fold_bn), strict=True)
    sn.load_state_dict(stock_fpn_state_dict(neck), strict=True)
    sb.eval(), sn.eval()
    x = torch.randn(1, 3, 129, 129, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = neck(backbone(x))
        got = sn(sb(x))
        fused = fuse_conv_bn(sb)   # stock mmcv: every conv + BN pair becomes one biased conv
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
        got_fused = sn(fused(x))
    # kept batch norms: the same float32 operations; folded ones: float32 rounding of other operations, which a
    # random 50-layer network amplifies to ~2e-5 (the source model in float32 against float64 differs as much)
    tol = 1e-4 if fold_bn else 1e-6
    for a, b, c in zip(want, got, got_fused):
        scale = a.abs().max()
        assert (a - b).abs().max() <= tol * scale
        assert (a - c).abs().max() <= 1e-4 * scale
    if fold_bn:   # the folded BNs are pure shifts
        for m in sb.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
                assert torch.equal(m.weight, torch.ones_like(m.weight))


# ---------------------------------------------------------------------------------------------------------------
# the tool, end to end
# ---------------------------------------------------------------------------------------------------------------

def _test_pipeline():
    return [dict(type="mmdet.LoadImageFromFile"),
            dict(type="mmdet.Resize", scale=(SIZE, SIZE), keep_ratio=True),
            dict(type="mmdet.PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape",
                                                       "scale_factor"))]


def _small_config(name):
    from rotplugin.presets import load_config, shrink_detector_config

    cfg = load_config(str(ROOT / CONFIGS[name]))
    if name != "demo":
        depth = 18 if name == "rotated_fcos" else 50
        cfg = shrink_detector_config(cfg, depth=depth, orientation=8 if depth == 50 else 4,
                                     width=16 if depth == 50 else 8)
    test_cfg = cfg.model.test_cfg.get("rcnn", cfg.model.test_cfg)
    test_cfg.update(score_thr=0.05, max_per_img=2000)   # no cut among near-tied scores
    if "nms_pre" in test_cfg:
        test_cfg.nms_pre = 300
    cfg.test_dataloader.dataset.pipeline = _test_pipeline()
    cfg.tta_model = dict(type="FeatureRotationTTAModel", score_thr=0.05, max_per_img=2000, iou_thr=0.1)
    return cfg


@pytest.fixture(scope="module")
def crop(tmp_path_factory):
    img = cv2.imread(str(require_file(REAL / "images" / "P0003.png")), cv2.IMREAD_COLOR)
    path = tmp_path_factory.mktemp("crop") / "P0003_crop.png"
    cv2.imwrite(str(path), img[440:640, 440:680])   # 240 x 200 px with vehicles
    return path


def _make(name, tmp, image):
    """Config + seeded checkpoint of a small ``name`` detector: calibrated batch norms, spread scores."""
    from mmengine.dataset import Compose, pseudo_collate

    from rotplugin.apis.export import build_detector

    cfg = _small_config(name)
    config, ckpt = save_config_and_random_weights(cfg, tmp / f"{name}.py", tmp / f"{name}.pth")
    _, model = build_detector(config, ckpt)
    data = pseudo_collate([Compose(cfg.test_dataloader.dataset.pipeline)(dict(img_path=str(image), img_id="x"))])
    # batch-norm statistics as training leaves them (those of the features they normalise, here of this image), and
    # random affine parameters: folding them is far from the identity, and the network stays as well conditioned
    # as a trained one (initialised statistics let activations grow with depth, and float rounding with them)
    g = torch.Generator().manual_seed(3)
    norms = [m for m in model.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in norms:
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            m.momentum = 1.0
            m.train()
        model.backbone(model.data_preprocessor(data, False)["inputs"])
    for m in norms:
        m.momentum = 0.1
    # and residual branches scaled down as training leaves them (the last norm of each block): without that, the
    # random network's own float32 rounding reaches 5e-5 of its features (against float64), more than the export's
    with torch.no_grad():
        for block in model.backbone.modules():
            if hasattr(block, "downsample") and hasattr(block, "norm2"):
                last = getattr(block, "norm3", block.norm2).bn
                last.weight.mul_(0.1)
    model.eval()
    state = {"state_dict": model.state_dict(), "meta": {}}
    sd = state["state_dict"]
    # initialised classifiers score every box near their prior, so that float rounding would decide between
    # (nearly) tied boxes; rescale each so that its logits on the image spread with std 1.5 (sigmoid heads
    # centred at -2.5), far from ties and from saturation; the regressors as REGRESSORS says
    logits = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: logits.setdefault(n, []).append(o.detach()))
             for n, m in model.named_modules() if n in CLASSIFIERS + REGRESSORS]
    with torch.no_grad():
        model.test_step(data)
    for h in hooks:
        h.remove()
    for n, outs in logits.items():
        values = torch.cat([o.flatten() for o in outs])
        factor = (1.5 if n in CLASSIFIERS else 0.3) / values.std().item()
        sd[n + ".weight"] = sd[n + ".weight"] * factor
        if n in REGRESSORS:
            sd[n + ".bias"] = torch.zeros_like(sd[n + ".bias"])
        elif "fc_cls" not in n:   # sigmoid heads
            sd[n + ".bias"] = torch.full_like(sd[n + ".bias"], -2.5)
    torch.save(state, str(ckpt))
    return config, ckpt


def _original_detections(config, ckpt, image):
    """The source model's detections (original pipeline and preprocessor) on ``image``."""
    from mmdet.structures.bbox import get_box_tensor
    from mmengine.dataset import Compose, pseudo_collate

    from rotplugin.apis.export import build_detector

    cfg, model = build_detector(config, ckpt)
    data = pseudo_collate([Compose(cfg.test_dataloader.dataset.pipeline)(dict(img_path=str(image), img_id="x"))])
    with torch.no_grad():
        res = model.test_step(data)[0].pred_instances
    return get_box_tensor(res.bboxes), res.scores, res.labels


def _stock_detections(folders, image, tmp, banned="escnn,e2cnn,rotplugin"):
    """Detections of each exported folder by stock mmrotate + mmdet's inference API in a subprocess where
    importing ``banned`` raises."""
    script = BLOCKER + textwrap.dedent("""
        import torch
        from mmrotate.utils import register_all_modules
        from mmdet.apis import inference_detector, init_detector
        from mmdet.structures.bbox import get_box_tensor
        register_all_modules()
        out = {}
        for folder in sys.argv[3].split(","):
            model = init_detector(f"{folder}/model.py", f"{folder}/model.pth", device="cpu")
            res = inference_detector(model, sys.argv[2]).pred_instances
            out[folder] = (get_box_tensor(res.bboxes), res.scores, res.labels, sorted(model.dataset_meta["classes"]))
        assert not any(m.split(".")[0] in ("escnn", "e2cnn") for m in sys.modules)
        torch.save(out, sys.argv[4])
    """)
    result = tmp / "stock_detections.pt"
    proc = subprocess.run([sys.executable, "-c", script, banned, str(image), ",".join(str(f) for f in folders),
                           str(result)], capture_output=True, text=True, cwd=str(tmp))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(str(result), weights_only=False)


def _assert_same(a, b):
    assert len(a[0]) == len(b[0]) and len(a[0]) > 0
    for x, y in ((a, b), (b, a)):
        frac, box, score = match_detections(x, y, box_tol=1e-3, score_tol=1e-4)
        assert frac == 1.0, (frac, box, score)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, crop):
    """The four shipped detector types exported (the last two with ONNX graphs)."""
    export = load_tool("export")
    tmp = tmp_path_factory.mktemp("export")
    out = {}
    for name in ("rotated_retinanet", "oriented_rcnn", "rotated_fcos", "demo"):
        config, ckpt = _make(name, tmp, crop)
        folder = tmp / f"{name}_export"
        onnx = ["--onnx"] if name in ("rotated_retinanet", "oriented_rcnn") else []
        assert export.main([str(config), str(ckpt), str(folder), *onnx]) == 0
        out[name] = (config, ckpt, folder)
    return tmp, out


def test_stock_mmrotate_gives_the_source_detections_without_escnn_or_rotplugin(exported, crop):
    tmp, out = exported
    stock = _stock_detections([f for _, _, f in out.values()], crop, tmp)
    for name, (config, ckpt, folder) in out.items():
        text = (folder / "model.py").read_text()
        assert "custom_imports" not in text and "Equivariant" not in text.split("\n\n", 1)[1]
        assert "type='mmdet.ResNet'" in text and "type='mmdet.FPN'" in text
        report = json.loads((folder / "export.json").read_text())
        assert report["canvas"] == [257, 257] and report["stock_features"]["float64_rel_error"] < 1e-9
        want = _original_detections(config, ckpt, crop)
        got = stock[str(folder)]
        _assert_same(want, got[:3])
        assert got[3] == sorted(["plane", "ship", "small-vehicle", "large-vehicle", "storage-tank"]) \
            if name == "demo" else len(got[3]) == 15


def test_onnx_runtime_detections_and_feature_tta_views(exported, crop):
    from mmdet.structures.bbox import get_box_tensor
    from mmengine.dataset import Compose, pseudo_collate

    from rotplugin.apis.export import build_detector
    from rotplugin.deploy.onnx import OnnxDetector
    from rotplugin.models.tta import FeatureRotationTTAModel, views_to_original

    tmp, out = exported
    for name in ("rotated_retinanet", "oriented_rcnn"):
        config, ckpt, folder = out[name]
        meta = json.loads((folder / "deploy.json").read_text())
        assert meta["tta"]["angles"] == [0.0, 90.0, 180.0, 270.0]
        for graph in meta["graphs"].values():
            assert graph["max_rel_error"] <= 1e-4
        stock_cfg, stock = build_detector(folder / "model.py", folder / "model.pth")
        data = pseudo_collate([Compose(stock_cfg.test_dataloader.dataset.pipeline)(
            dict(img_path=str(crop), img_id="x"))])
        data = stock.data_preprocessor(data, False)
        inputs, samples = data["inputs"], data["data_samples"]
        with torch.no_grad():
            want = stock.predict(inputs, [s.clone() for s in samples])[0].pred_instances
        got = OnnxDetector(stock, folder).predict(inputs, [s.clone() for s in samples])[0].pred_instances
        _assert_same((get_box_tensor(want.bboxes), want.scores, want.labels),
                     (get_box_tensor(got.bboxes), got.scores, got.labels))

        # the TTA graph's views = the PyTorch feature-TTA views of the source model, and so the merged result
        cfg, model = build_detector(config, ckpt)
        tta = FeatureRotationTTAModel(model, **{k: v for k, v in cfg.tta_model.items() if k != "type"})
        src = cfg.test_dataloader.dataset.pipeline
        src_data = model.data_preprocessor(pseudo_collate([Compose(src)(dict(img_path=str(crop), img_id="x"))]),
                                           False)
        assert torch.allclose(src_data["inputs"], inputs, atol=1e-5)
        torch_views = tta.predict_views(src_data["inputs"], src_data["data_samples"])[0]
        runner = OnnxDetector(stock, folder, tta=True)
        outs = runner.session(inputs)
        canvas = tuple(inputs.shape[-2:])
        for angle, results, torch_view in zip(meta["tta"]["angles"], runner.view_results(outs, canvas, samples),
                                              torch_views):
            view = views_to_original(results, angle, canvas, samples)[0].pred_instances
            ref = torch_view.pred_instances
            _assert_same((get_box_tensor(ref.bboxes), ref.scores, ref.labels),
                         (get_box_tensor(view.bboxes), view.scores, view.labels))
        merged = runner.predict(inputs, samples)[0].pred_instances
        ref = tta.merge_preds([torch_views])[0].pred_instances
        _assert_same((get_box_tensor(ref.bboxes), ref.scores, ref.labels),
                     (get_box_tensor(merged.bboxes), merged.scores, merged.labels))
        # image TTA on model.onnx (one call per rotated input): the same merged detections, on the exact canvas
        image = OnnxDetector(stock, folder).predict_image_tta(inputs, samples, meta["tta"]["angles"])
        image = image[0].pred_instances
        _assert_same((get_box_tensor(ref.bboxes), ref.scores, ref.labels),
                     (get_box_tensor(image.bboxes), image.scores, image.labels))
        with pytest.raises(ValueError, match="tta=False"):
            runner.predict_image_tta(inputs, samples)
        with pytest.raises(ValueError, match="not a multiple of 90"):
            OnnxDetector(stock, folder).predict_image_tta(inputs, samples, [0, 45])


def test_redet_keeps_only_the_riroi_extractor(tmp_path, crop):
    export = load_tool("export")
    config, ckpt = _make("redet", tmp_path, crop)
    folder = tmp_path / "redet_export"
    assert export.main([str(config), str(ckpt), str(folder)]) == 0
    text = (folder / "model.py").read_text()
    assert "custom_imports" in text and "'rotplugin.models.roi_extractors'," in text
    assert "kept rotplugin piece: RiRoIExtractor" in text and "rotplugin.mm" not in text
    stock = _stock_detections([folder], crop, tmp_path, banned="escnn,e2cnn")
    _assert_same(_original_detections(config, ckpt, crop), stock[str(folder)][:3])


# ---------------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------------

def test_bad_input_names_what_is_wrong_and_writes_nothing(exported, capsys):
    from mmrotate.registry import MODELS

    from rotplugin.presets import load_config

    export = load_tool("export")
    tmp, out = exported
    retina_cfg, retina_ckpt, _ = out["rotated_retinanet"]
    fcos_cfg, fcos_ckpt, _ = out["rotated_fcos"]

    def fails(args, *needles):
        dest = tmp / "bad_out"
        assert export.main([*map(str, args[:2]), str(dest), *args[2:]]) == 2
        err = capsys.readouterr().err
        for needle in needles:
            assert needle in err, err
        assert not dest.exists()
        assert not [p for p in tmp.iterdir() if p.name.startswith(".bad_out")]   # no temporary folder left

    fails([retina_cfg, fcos_ckpt], "does not fit the config's model", "another architecture")
    from mmengine.config import Config

    stock_path = tmp / "plain.py"   # mmrotate's own R50 Rotated RetinaNet
    stock_path.write_text("_base_ = ['mmrotate::rotated_retinanet/rotated-retinanet-rbox-le90_r50_fpn_1x_dota.py']\n"
                          "model = dict(backbone=dict(init_cfg=None))\n")
    stock_cfg = load_config(str(stock_path))
    torch.manual_seed(0)
    plain_model = MODELS.build(stock_cfg.model)
    torch.save({"state_dict": plain_model.state_dict()}, str(tmp / "plain.pth"))
    fails([stock_path, tmp / "plain.pth"], "already plain", "ResNet")
    fails([retina_cfg, retina_ckpt, "--canvas", "256", "256"], "not equivariant", "max_stride 128")
    fails([retina_cfg, tmp / "missing.pth"], "cannot be read")

    @MODELS.register_module(force=True)
    class NoExportNeck(nn.Module):   # a neck of some other project: neither stock nor exportable
        def __init__(self, **kw):
            super().__init__()
            self.inner = MODELS.build(dict(kw, type="EquivariantFPN"))

        def forward(self, x):
            return self.inner(x)

    cfg = Config.fromfile(str(retina_cfg))
    cfg.model.neck.type = "NoExportNeck"
    cfg.dump(str(tmp / "noexport.py"))
    sd = torch.load(str(retina_ckpt), weights_only=True)["state_dict"]
    sd = {k.replace("neck.", "neck.inner.", 1) if k.startswith("neck.") else k: v for k, v in sd.items()}
    torch.save({"state_dict": sd}, str(tmp / "noexport.pth"))
    fails([tmp / "noexport.py", tmp / "noexport.pth"], "neck NoExportNeck has no export() and no stock equivalent")

    # an existing non-empty OUT_DIR is kept as it is
    keep = tmp / "keep"
    keep.mkdir()
    (keep / "mine.txt").write_text("mine")
    assert export.main([str(retina_cfg), str(retina_ckpt), str(keep)]) == 2
    assert "--overwrite" in capsys.readouterr().err and [p.name for p in keep.iterdir()] == ["mine.txt"]


def test_an_interrupted_export_leaves_no_folder(exported, monkeypatch):
    tmp, out = exported
    config, ckpt, _ = out["rotated_retinanet"]
    export = load_tool("export")
    real = torch.save
    calls = []

    def save_then_die(obj, path, *a, **kw):
        calls.append(path)
        real(obj, path, *a, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        export.main([str(config), str(ckpt), str(tmp / "interrupted")])
    assert calls and not (tmp / "interrupted").exists()
    assert not [p for p in tmp.iterdir() if p.name.startswith(".interrupted")]
