"""Mixed precision: the AMP configs train and predict under CPU bfloat16 autocast (the float16 CUDA path is the same
wrapper with another dtype); the 90° equivariance of backbone + FPN survives lower precision up to its rounding."""
import pytest
import torch

from conftest import ROOT
from test_detectors import make_batch

AMP_CONFIGS = ["configs/oriented_rcnn/oriented-rcnn-le90_er50-c8_efpn_amp-1x_dota.py",
               "configs/redet/redet-le90_er50-c8_efpn_amp-1x_dota.py"]


@pytest.fixture
def amp_wrapper_on_cpu(monkeypatch):
    """mmengine refuses to build AmpOptimWrapper without an accelerator. Its only device-bound parts are that check
    and the CUDA GradScaler, which disables itself without CUDA (bfloat16 needs no loss scaling): lifting the check
    runs the config's own wrapper, whose autocast then takes the CPU's bfloat16."""
    from mmengine.optim.optimizer import amp_optimizer_wrapper

    monkeypatch.setattr(amp_optimizer_wrapper, "is_cuda_available", lambda: True)


def _small(config):
    from mmrotate.registry import MODELS

    from rotplugin.presets import load_config, shrink_detector_config

    cfg = shrink_detector_config(load_config(str(ROOT / config)))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return cfg, model


@pytest.mark.parametrize("config", AMP_CONFIGS)
def test_amp_config_trains_and_predicts_under_cpu_bfloat16(config, amp_wrapper_on_cpu):
    from mmengine.optim import AmpOptimWrapper, build_optim_wrapper

    from mmdet.structures.bbox import get_box_tensor

    from rotplugin.models.mixed_precision import float32_box_coding

    cfg, model = _small(config)
    float32_box_coding(model)
    assert cfg.optim_wrapper.type == "AmpOptimWrapper" and cfg.optim_wrapper.optimizer.type == "SGD"
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    assert isinstance(wrapper, AmpOptimWrapper)
    dtypes = {}

    def record(name):
        def hook(module, inputs, out):
            dtypes[name] = {t.dtype for t in (out if isinstance(out, (list, tuple)) else [out])}
        return hook

    hooks = [getattr(model, name).register_forward_hook(record(name)) for name in ("backbone", "neck")]
    model.train()
    data = model.data_preprocessor(make_batch(129), True)
    with wrapper.optim_context(model):
        losses = model(**data, mode="loss")
    assert dtypes == {"backbone": {torch.bfloat16}, "neck": {torch.bfloat16}}   # autocast ran in bfloat16
    loss, log_vars = model.parse_losses(losses)
    assert all(torch.isfinite(torch.as_tensor(v)) for v in log_vars.values()), log_vars
    wrapper.backward(loss)
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(bool(g.abs().sum() > 0) for g in grads) >= 0.9 * len(grads)     # the backbone learns
    assert all(p.dtype == torch.float32 for p in model.parameters())          # master weights stay float32
    wrapper.step()
    wrapper.zero_grad()
    log_vars = model.train_step(make_batch(129), wrapper)                    # the Runner's path, once more
    assert all(torch.isfinite(torch.as_tensor(v)) for v in log_vars.values()), log_vars
    for h in hooks:
        h.remove()
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        pred = model.test_step(make_batch(129))[0].pred_instances
    boxes = get_box_tensor(pred.bboxes)
    assert len(pred.scores) > 0 and boxes.dtype == pred.scores.dtype == torch.float32
    assert torch.isfinite(boxes).all() and torch.isfinite(pred.scores).all()


def test_without_float32_box_coding_cpu_bfloat16_fails_and_the_hook_patches_for_the_run():
    from mmengine.logging import MMLogger

    from rotplugin.engine import Float32BoxCodingHook
    from rotplugin.models.mixed_precision import float32_box_coding

    cfg, model = _small(AMP_CONFIGS[0])
    assert cfg.custom_hooks == [dict(type="Float32BoxCodingHook")]
    model.train()
    data = model.data_preprocessor(make_batch(129), True)
    # the control: mmrotate's box conversion goes through numpy, which has no bfloat16
    with pytest.raises(TypeError, match="BFloat16"), torch.autocast("cpu", dtype=torch.bfloat16):
        model(**data, mode="loss")

    class FakeRunner:
        logger = MMLogger.get_instance("rotplugin-test")

    runner = FakeRunner()
    runner.model = model
    hook = Float32BoxCodingHook()
    hook.before_run(runner)
    patched = [m for m in model.modules() if "forward" in m.__dict__]
    assert {type(m).__name__ for m in patched} >= {"OrientedRPNHead", "RotatedSingleRoIExtractor"}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(**data, mode="loss")
    assert all(torch.isfinite(torch.as_tensor(v).float()).all() for v in losses.values())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hook.after_run(runner)
    assert not any("forward" in m.__dict__ for m in model.modules())        # the detector as built
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert float32_box_coding(model) == float32_box_coding(model) == len(patched)   # twice: the same patches
    runner.model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="Float32BoxCodingHook: Linear has no dense head"):
        hook.before_run(runner)


def test_bfloat16_equivariance_error_is_its_rounding(tmp_path):
    """On the canvas the construction is exact: in bfloat16 the 90° error of backbone + FPN is of the size of the
    rounding (the same input in bfloat16 against float32), in float32 far below it."""
    import json

    from conftest import load_tool

    check = load_tool("check_equivariance")
    out = {}
    for name, extra in (("fp32", []), ("bf16", ["--autocast", "bfloat16"])):
        path = tmp_path / f"{name}.json"
        check.main(["--depth", "18", "--orientation", "4", "--size", "128", "--angles", "90", "180",
                    "--json", str(path)] + extra)
        out[name] = json.loads(path.read_text())["canvas"]
    fp32 = max(e for row in out["fp32"]["errors"] for e in row["per_level"])
    bf16 = max(e for row in out["bf16"]["errors"] for e in row["per_level"])
    rounding = out["bf16"]["rounding_vs_float32"]
    assert fp32 < 1e-5
    assert min(rounding) > 1e-4 and bf16 > 10 * fp32      # bfloat16 does round (8 bits of mantissa)
    assert bf16 <= 4 * max(rounding), (bf16, rounding)     # and its equivariance error is that rounding
