"""ReDet compatibility: e2cnn ReResNet / ReFPN checkpoints converted to EquivariantResNet / EquivariantFPN.

The oracle is mmrotate's own e2cnn ReDet backbone and neck with seeded random weights and batch-norm statistics: after
conversion our escnn modules must give the same pyramid on a real DOTA image. Depth 18 at ReDet's width and a narrow
depth-50 (bottleneck) variant keep this file fast; the full-width ReResNet-50 + ReFPN (about 40 s to build in e2cnn on
this machine) runs only with ``ROTPLUGIN_SLOW_TESTS=1`` (``test_full_width_redet_r50``).
"""
import argparse
import functools
import os
import sys
import time
import warnings

import numpy as np
import pytest
import torch

from conftest import DEMO_JPG, load_tool

warnings.filterwarnings("ignore", category=UserWarning)
pytest.importorskip("e2cnn")

import e2cnn.nn as e2nn  # noqa: E402
from mmdet.models.backbones import ResNet  # noqa: E402
from mmrotate.models.backbones.re_resnet import ReResNet  # noqa: E402
from mmrotate.models.necks.re_fpn import ReFPN  # noqa: E402

from rotplugin.convert import (ArchitectureMismatch, RedetConversionError, convert_redet_state_dict,  # noqa: E402
                               infer_redet_architecture, is_redet_state_dict)
from rotplugin.convert import redet as redet_mod  # noqa: E402
from rotplugin.io import image_to_tensor, load_image  # noqa: E402
from rotplugin.models import EquivariantFPN, EquivariantResNet  # noqa: E402
from rotplugin.nn.field_layers import FieldConv  # noqa: E402

convert_tool = load_tool("convert_redet_checkpoint")

TOL_OUTPUT = 1e-4  # max|ours - ReDet| / max|ReDet| per pyramid level
TOL_FILTER = 1e-5  # expanded filters, layer by layer


def rel(a, b):
    return float((a - b).detach().abs().max() / b.detach().abs().max())


def build_redet(depth, width, neck_channels, seed):
    """mmrotate's e2cnn ReResNet + ReFPN (C8) with random weights, biases and batch-norm statistics."""
    torch.manual_seed(seed)
    backbone = ReResNet(depth=depth, stem_channels=width, base_channels=width, out_indices=(0, 1, 2, 3))
    neck = ReFPN([c for c in backbone_channels(depth, width)], neck_channels, num_outs=5)
    g = torch.Generator().manual_seed(seed + 1)
    for m in list(backbone.modules()) + list(neck.modules()):
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.num_batches_tracked.fill_(7)
        elif isinstance(m, e2nn.R2Conv) and m.bias is not None:
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    backbone.train(), neck.train()  # (ReResNet.train returns None)
    return backbone, neck


def backbone_channels(depth, width):
    return [width * (1 if depth < 50 else 4) * 2 ** i for i in range(4)]


def detector_state_dict(backbone, neck):
    sd = {"backbone." + k: v for k, v in backbone.state_dict().items()}
    sd.update({"neck." + k: v for k, v in neck.state_dict().items()})
    sd["roi_head.bbox_head.0.fc_cls.weight"] = torch.arange(6.0).reshape(2, 3)
    return {"meta": {"epoch": 12}, "state_dict": sd}


def ours(depth, width, neck_channels):
    backbone = EquivariantResNet(depth=depth, orientation=8, stem_channels=width, base_channels=width)
    neck = EquivariantFPN(backbone.out_channels, neck_channels, num_outs=5, orientation=8, upsample_mode="nearest")
    return backbone, neck


def load_parts(converted, backbone, neck):
    backbone.load_state_dict({k[9:]: v for k, v in converted.items() if k.startswith("backbone.")}, strict=True)
    neck.load_state_dict({k[5:]: v for k, v in converted.items() if k.startswith("neck.")}, strict=True)
    return backbone.eval(), neck.eval()


@pytest.fixture(scope="module")
def image():
    img, _ = load_image(str(DEMO_JPG) if DEMO_JPG.exists() else None, (256, 256))  # else a synthetic scene
    return image_to_tensor(img)


ARCHS = {"r18": (18, 64, 64), "r50-narrow": (50, 16, 32)}


@functools.lru_cache(maxsize=None)
def redet_case(name):
    """The ReDet detector ``ARCHS[name]`` with its train-mode checkpoint, built once (every test shares it)."""
    depth, width, neck_channels = ARCHS[name]
    backbone, neck = build_redet(depth, width, neck_channels, seed=depth)
    return dict(name=name, depth=depth, width=width, neck_channels=neck_channels, backbone=backbone,
                neck=neck, train_ckpt=detector_state_dict(backbone, neck))


@pytest.fixture(scope="module", params=list(ARCHS))
def redet(request):
    """Every architecture of ``ARCHS``; a test about one of them names it with
    ``@pytest.mark.parametrize("redet", [name], indirect=True)``."""
    return redet_case(request.param)


@pytest.fixture(scope="module")
def redet_outputs(redet, image):
    """ReDet's pyramid (C2..C5, P2..P6) on the image; also stores the eval-mode checkpoint in ``redet``."""
    if "outputs" not in redet:
        backbone, neck = redet["backbone"], redet["neck"]
        backbone.eval(), neck.eval()
        with torch.no_grad():
            feats = backbone(image)
            outs = [t.detach().clone() for t in neck(feats)]
            feats = [f.tensor.detach().clone() for f in feats]
        redet["eval_ckpt"] = detector_state_dict(backbone, neck)
        backbone.train(), neck.train()
        redet["outputs"] = (feats, outs)
    return redet["outputs"]


def compare(redet, converted, image, outputs, backbone=None, neck=None):
    if backbone is None:
        backbone, neck = ours(redet["depth"], redet["width"], redet["neck_channels"])
    backbone, neck = load_parts(converted, backbone, neck)
    with torch.no_grad():
        feats = backbone(image)
        outs = neck(feats)
    errors = [rel(a, b) for a, b in zip(feats, outputs[0])] + [rel(a, b) for a, b in zip(outs, outputs[1])]
    assert len(errors) == 9
    return errors, backbone, neck


def convert_into(redet, sd, train_mode=False):
    """Convert into freshly built modules of ours (reused as the targets, no second build) and load."""
    backbone, neck = ours(redet["depth"], redet["width"], redet["neck_channels"])
    backbone.train(train_mode), neck.train(train_mode)
    converted, report = convert_redet_state_dict(sd, backbone, neck)
    return converted, report, backbone, neck


def test_train_mode_checkpoint_matches_redet(redet, redet_outputs, image):
    if redet["name"] == "r18":  # targets built by factories from the architecture read off the checkpoint
        converted, report = convert_redet_state_dict(redet["train_ckpt"], EquivariantResNet, EquivariantFPN)
        arch = report.architecture["backbone"]
        assert (arch["depth"], arch["stem_channels"], arch["base_channels"]) == (18, redet["width"], redet["width"])
        backbone = neck = None
    else:  # into given target modules
        converted, report, backbone, neck = convert_into(redet, redet["train_ckpt"])
    assert report.parts == {"backbone": "backbone.", "neck": "neck."}
    assert report.passthrough == ["roi_head.bbox_head.0.fc_cls.weight"]  # heads pass through unchanged
    assert torch.equal(converted["roi_head.bbox_head.0.fc_cls.weight"], torch.arange(6.0).reshape(2, 3))
    assert {r.mode for r in report.layers if r.kind == "conv"} == {"weights"}
    s = report.summary()
    assert s["max_basis_residual"] < 1e-6 and s["max_filter_residual"] < TOL_FILTER
    assert s["max_bias_residual"] < TOL_FILTER
    errors, backbone, neck = compare(redet, converted, image, redet_outputs, backbone, neck)
    print(f"{redet['name']}: per-level relative errors (C2..C5, P2..P6):", ", ".join(f"{e:.1e}" for e in errors))
    assert max(errors) <= TOL_OUTPUT, errors
    # the coefficient layout, checked independently: e2cnn's own expansion of every layer vs escnn's
    for module, source in ((backbone, redet["backbone"]), (neck, redet["neck"])):
        for path, m in module.named_modules():
            if isinstance(m, FieldConv):
                e2 = source.get_submodule(path if module is backbone else path + ".conv")
                f2, b2 = e2.expand_parameters()
                f3, b3 = m.conv.expand_parameters()
                assert rel(f3, f2) < TOL_FILTER, path
                if b2 is not None:
                    assert rel(b3, b2) < TOL_FILTER, path


def test_eval_mode_checkpoint(redet, redet_outputs, image):
    """Eval-mode checkpoints carry e2cnn's expanded filters as buffers, checked against the conversion."""
    sd = redet["eval_ckpt"]["state_dict"]
    assert any(k.endswith(".filter") for k in sd) and any(k.endswith(".expanded_bias") for k in sd)
    converted, report, backbone, neck = convert_into(redet, sd)
    assert report.summary()["max_checkpoint_filter_check"] < TOL_FILTER
    errors, _, _ = compare(redet, converted, image, redet_outputs, backbone, neck)
    assert max(errors) <= TOL_OUTPUT, errors


@pytest.mark.parametrize("redet", ["r18"], indirect=True)  # test_without_e2cnn converts the narrow R50's filters
def test_filter_only_checkpoint(redet, redet_outputs, image):
    """With only the eval-mode filters (no coefficients) the filters are projected onto escnn's basis."""
    sd = redet["eval_ckpt"]["state_dict"]
    filters_only = {k: v for k, v in sd.items() if not k.endswith((".weights", ".bias")) or "batch_norm" in k}
    # converted into (and loaded by) modules in train mode: escnn keeps no filter caches there
    converted, report, backbone, neck = convert_into(redet, filters_only, train_mode=True)
    assert {r.mode for r in report.layers if r.kind == "conv"} == {"filter"}
    assert report.summary()["max_filter_residual"] < TOL_FILTER
    errors, _, _ = compare(redet, converted, image, redet_outputs, backbone, neck)
    assert max(errors) <= TOL_OUTPUT, errors


def test_tool_reads_the_architecture_off_the_checkpoint(redet, redet_outputs, image, tmp_path, capsys):
    """No flags: depth, group, widths and stages (and the ReFPN's) come from the checkpoint; a flag that
    contradicts it is an error naming the flag and what the checkpoint has."""
    src, dst = tmp_path / "redet.pth", tmp_path / "converted.pth"
    torch.save(redet["train_ckpt"], src)
    assert convert_tool.main([str(src), str(dst), "--quiet"]) == 0
    saved = torch.load(dst)
    arch = saved["meta"]["rotplugin_redet_conversion"]["architecture"]
    width = redet["width"]
    assert arch["backbone"] == dict(depth=redet["depth"], orientation=8, flip=False, in_channels=3, stem_channels=width,
                                    base_channels=width, num_stages=4, out_indices=(0, 1, 2, 3))
    assert arch["neck"]["in_channels"] == backbone_channels(redet["depth"], width)
    assert arch["neck"]["out_channels"] == redet["neck_channels"] and arch["neck"]["num_outs"] == 5
    errors, _, _ = compare(redet, saved["state_dict"], image, redet_outputs)
    assert max(errors) <= TOL_OUTPUT, errors

    capsys.readouterr()
    other_depth = 50 if redet["depth"] == 18 else 18
    for flag, value, has in (("--depth", other_depth, f"(ReResNet depth {redet['depth']})"),
                             ("--orientation", 4, "regular fields of 8 channels (C8)"),
                             ("--base-channels", 2 * width, f"{width} base channels"),
                             ("--num-stages", 3, "4 stages")):
        assert convert_tool.main([str(src), str(tmp_path / "never.pth"), flag, str(value)]) == 2
        err = capsys.readouterr().err
        assert f"error: {flag} {value} contradicts {src}" in err and has in err, err
    assert not (tmp_path / "never.pth").exists()


@pytest.mark.parametrize("redet", ["r50-narrow"], indirect=True)
def test_checkpoint_file_tool_and_init_weights(redet, redet_outputs, image, tmp_path):
    main = convert_tool.main
    src, dst = tmp_path / "redet.pth", tmp_path / "converted.pth"
    torch.save(redet["train_ckpt"], src)
    # flags that agree with the checkpoint are accepted
    args = [str(src), str(dst), "--depth", "50", "--stem-channels", "16", "--base-channels", "16", "--quiet"]
    # a runner checkpoint's numpy objects load safely (rotplugin.checkpoints); other Python objects are refused
    runner_ckpt, odd_ckpt = tmp_path / "runner.pth", tmp_path / "odd.pth"
    torch.save(dict(redet["train_ckpt"], message_hub=dict(eta=np.float64(1.0))), runner_ckpt)
    assert redet_mod.load_checkpoint_file(str(runner_ckpt))["message_hub"]["eta"] == 1.0
    torch.save(dict(redet["train_ckpt"], message_hub=argparse.Namespace(eta=1.0)), odd_ckpt)
    assert main([str(odd_ckpt)] + args[1:]) == 2  # refused, with a hint to --trusted
    assert redet_mod.load_checkpoint_file(str(odd_ckpt), trusted=True)["message_hub"].eta == 1.0
    assert main(args + ["--json", str(tmp_path / "report.json")]) == 0
    saved = torch.load(dst)  # the converted file loads with weights_only=True
    assert saved["meta"]["epoch"] == 12 and saved["meta"]["rotplugin_redet_conversion"]["conv_layers"] == 61
    assert set(saved) == {"meta", "state_dict"}
    assert (tmp_path / "report.json").exists()
    assert saved["state_dict"]["roi_head.bbox_head.0.fc_cls.weight"].shape == (2, 3)

    # the backbone's Pretrained init: the original e2cnn detector file (converted on the fly; the backbone keys are
    # found without a prefix), a bare e2cnn ReResNet file, and the converted file (mmengine's default path)
    bare = tmp_path / "rer50_bare.pth"
    torch.save({k[9:]: v for k, v in redet["train_ckpt"]["state_dict"].items() if k.startswith("backbone.")}, bare)
    reference = None
    for checkpoint, prefix in ((src, None), (bare, None), (dst, "backbone.")):
        init_cfg = dict(type="Pretrained", checkpoint=str(checkpoint))
        if prefix:
            init_cfg["prefix"] = prefix
        model = EquivariantResNet(depth=50, orientation=8, stem_channels=16, base_channels=16, init_cfg=init_cfg)
        model.init_weights()
        with torch.no_grad():
            out = model.eval()(image)
        if reference is None:
            reference = out
            assert max(rel(a, b) for a, b in zip(out, redet_outputs[0])) <= TOL_OUTPUT
        else:
            assert max(rel(a, b) for a, b in zip(out, reference)) <= 1e-6, (checkpoint, prefix)

    # a ReDet R50 checkpoint into an R18 backbone: a clear error, not a silently half-loaded model
    wrong = EquivariantResNet(depth=18, orientation=8, stem_channels=16, base_channels=16,
                              init_cfg=dict(type="Pretrained", checkpoint=str(src)))
    with pytest.raises(RedetConversionError, match="depth 50"):
        wrong.init_weights()


def convert(sd, **backbone_cfg):
    """Convert into targets built from the architecture read off ``sd``, ``backbone_cfg`` on top."""
    return convert_redet_state_dict(sd, EquivariantResNet, EquivariantFPN, backbone_cfg=backbone_cfg)


def test_bad_checkpoints_raise_clear_errors():
    backbone, neck = build_redet(18, 8, 16, seed=5)  # tiny: one regular field in the stem
    sd = detector_state_dict(backbone, neck)["state_dict"]
    kw = dict(stem_channels=8, base_channels=8)
    # another architecture: a torchvision-style ResNet
    torchvision_like = ResNet(depth=18).state_dict()
    assert not is_redet_state_dict(torchvision_like) and is_redet_state_dict(sd)
    with pytest.raises(RedetConversionError, match="not an e2cnn ReDet checkpoint.*conv1.weight"):
        convert(torchvision_like)
    # already converted
    converted, _ = convert(sd, depth=18, **kw)
    with pytest.raises(RedetConversionError, match="rotplugin"):
        convert(converted, depth=18, **kw)
    # another depth: R18 checkpoint for an R50 model
    with pytest.raises(RedetConversionError) as err:
        convert(sd, depth=50, **kw)
    msg = str(err.value)
    assert "missing keys" in msg and "backbone.layer1.0.conv3.weights" in msg and "depth 18" in msg
    # missing keys are listed
    broken = {k: v for k, v in sd.items()
              if not k.startswith(("backbone.layer3.1.conv2.", "backbone.layer2.0.bn1."))}
    with pytest.raises(RedetConversionError) as err:
        convert(broken, depth=18, **kw)
    msg = str(err.value)
    assert "backbone.layer3.1.conv2.weights" in msg and "backbone.layer2.0.bn1.batch_norm_[8].running_var" in msg
    # wrong width: shape mismatches are listed
    with pytest.raises(RedetConversionError, match="shape mismatches"):
        convert(sd, depth=18, stem_channels=16, base_channels=16)
    # unexpected keys inside the backbone
    extra = dict(sd, **{"backbone.layer5.0.conv1.weights": torch.zeros(3)})
    with pytest.raises(RedetConversionError, match="(?s)unexpected keys.*backbone.layer5.0.conv1.weights"):
        convert(extra, depth=18, **kw)


def test_infer_redet_architecture():
    """The architecture read off a checkpoint's keys and shapes; values the caller insists on must agree with it."""
    sd = redet_case("r50-narrow")["train_ckpt"]
    arch = infer_redet_architecture(sd)
    assert arch["backbone"] == dict(depth=50, orientation=8, flip=False, in_channels=3, stem_channels=16,
                                    base_channels=16, num_stages=4, out_indices=(0, 1, 2, 3))
    assert arch["neck"] == dict(in_channels=[64, 128, 256, 512], out_channels=32, start_level=0, num_outs=5,
                                upsample_mode="nearest", orientation=8, flip=False)
    agreed = infer_redet_architecture(sd, parts=("backbone",), depth=50, orientation=8, stem_channels=None)
    assert agreed == {"backbone": arch["backbone"]}
    with pytest.raises(ArchitectureMismatch, match=r"orientation=4 contradicts the checkpoint, which has regular "
                                                   r"fields of 8 channels \(C8\)") as err:
        infer_redet_architecture(sd, orientation=4)
    assert (err.value.argument, err.value.given) == ("orientation", 4)

    # two stages of bottleneck blocks: ReResNet-50 and -101 alike (the same modules); a given depth chooses
    two = {k: v for k, v in sd["state_dict"].items()
           if k.startswith(("backbone.conv1.", "backbone.bn1.", "backbone.layer1.", "backbone.layer2."))}
    backbone = infer_redet_architecture(two)["backbone"]
    assert (backbone["depth"], backbone["num_stages"], backbone["out_indices"]) == (50, 2, (0, 1))
    assert infer_redet_architecture(two, depth=101)["backbone"]["depth"] == 101
    with pytest.raises(ArchitectureMismatch, match=r"depth=34 contradicts.*\[3, 4\] bottleneck blocks per stage "
                                                   r"\(ReResNet depth 50 or 101\)"):
        infer_redet_architecture(two, depth=34)
    converted, report = convert_redet_state_dict(two, EquivariantResNet)  # no neck in this checkpoint
    target = EquivariantResNet(**report.architecture["backbone"])
    target.load_state_dict(redet_mod.sub_state_dict(converted, "backbone."), strict=True)

    # a stem alone (no stages: depth and widths given): its input width from its number of coefficients
    dim = redet_mod._escnn_block(8, False, ("trivial", "regular"), 7, 1)[0].shape[1]
    stem = {"conv1.weights": torch.zeros(2 * 4 * dim), "bn1.batch_norm_[8].running_mean": torch.zeros(2)}
    backbone = infer_redet_architecture(stem, depth=18, base_channels=16, num_stages=1)["backbone"]
    assert [backbone[k] for k in ("orientation", "flip", "stem_channels", "in_channels")] == [8, False, 16, 4]


@pytest.mark.parametrize("orientation,flip", [(8, False), (4, False), (4, True)])
def test_block_bases_span_the_same_filters(orientation, flip):
    for roles, k in ((("trivial", "regular"), 7), (("regular", "regular"), 3), (("regular", "regular"), 1)):
        m = redet_mod.block_basis_map(orientation, flip, roles, k)
        assert m["basis_residual"] < 1e-6, (roles, k)
        assert m["T"].shape[0] == m["T"].shape[1]
        assert m["bias_residual"] < 1e-6


@pytest.mark.parametrize("redet", ["r50-narrow"], indirect=True)
def test_without_e2cnn(monkeypatch, redet, redet_outputs, image):
    """e2cnn is an optional extra: coefficients need it (a clear ImportError), eval-mode filters do not."""
    monkeypatch.setitem(sys.modules, "e2cnn", None)
    monkeypatch.setattr(redet_mod, "_E2CNN_BLOCKS", {})
    monkeypatch.setattr(redet_mod, "_MAPS", {})
    backbone, neck = ours(redet["depth"], redet["width"], redet["neck_channels"])
    with pytest.raises(ImportError, match=r"rotplugin\[redet\]"):
        convert_redet_state_dict(redet["train_ckpt"], backbone, neck)
    sd = redet["eval_ckpt"]["state_dict"]
    filters_only = {k: v for k, v in sd.items() if not k.endswith((".weights", ".bias")) or "batch_norm" in k}
    converted, _ = convert_redet_state_dict(filters_only, backbone, neck)
    errors, _, _ = compare(redet, converted, image, redet_outputs, backbone, neck)
    assert max(errors) <= TOL_OUTPUT


def test_field_conv_loads_state_dicts_of_either_mode():
    """escnn keeps the expanded filter as a buffer in eval mode; FieldConv drops it (no such buffers; its state
    dict is the same in both modes) and loads state dicts with or without it in either mode, strictly."""
    torch.manual_seed(0)
    src = EquivariantResNet(depth=18, orientation=4, stem_channels=8, base_channels=8)
    dst = EquivariantResNet(depth=18, orientation=4, stem_channels=8, base_channels=8)
    x = torch.randn(1, 3, 33, 33)
    train_sd, eval_sd = src.train().state_dict(), src.eval().state_dict()
    assert list(train_sd) == list(eval_sd)
    assert not any(k.endswith((".filter", ".expanded_bias")) for k in train_sd)
    assert not any(name.endswith((".filter", ".expanded_bias")) for name, _ in src.named_buffers())
    # what escnn's eval mode (and FieldConv before it dropped the caches) saved
    legacy_sd = dict(eval_sd, **{f"{name}.conv.filter": m.conv.expand_parameters()[0].detach()
                                 for name, m in src.named_modules() if isinstance(m, FieldConv)})
    assert len(legacy_sd) > len(eval_sd)
    with torch.no_grad():
        expected = src(x)
    for sd in (train_sd, eval_sd, legacy_sd):
        for mode in (True, False):
            dst.train(mode).load_state_dict(sd, strict=True)
            with torch.no_grad():
                got = dst.eval()(x)
            assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, expected))


@pytest.mark.skipif(not os.environ.get("ROTPLUGIN_SLOW_TESTS"),
                    reason="full-width ReResNet-50: set ROTPLUGIN_SLOW_TESTS=1")
def test_full_width_redet_r50(image, tmp_path):
    """ReDet's own architecture (ReResNet-50 C8, ReFPN 256): the converted file reproduces the pyramid."""
    start = time.perf_counter()
    backbone, neck = build_redet(50, 64, 256, seed=50)
    built = time.perf_counter()
    ckpt = detector_state_dict(backbone, neck)
    backbone.eval(), neck.eval()
    with torch.no_grad():
        feats = backbone(image)
        outputs = ([f.tensor for f in feats], list(neck(feats)))
    src, dst = tmp_path / "redet_r50.pth", tmp_path / "er50.pth"
    torch.save(ckpt, src)
    converted_at = time.perf_counter()
    assert convert_tool.main([str(src), str(dst), "--json", str(tmp_path / "report.json")]) == 0
    done = time.perf_counter()
    errors, _, _ = compare(dict(depth=50, width=64, neck_channels=256), torch.load(dst, weights_only=False)[
        "state_dict"], image, outputs)
    print(f"e2cnn build {built - start:.1f} s, conversion (tool) {done - converted_at:.1f} s; per-level relative "
          f"errors (C2..C5, P2..P6): " + ", ".join(f"{e:.1e}" for e in errors))
    assert max(errors) <= TOL_OUTPUT, errors
