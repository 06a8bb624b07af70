"""The GPU path (``pytest -m cuda``; run by ``tools/gpu_check.sh`` on a GPU machine, skipped elsewhere).

Every test takes the ``device`` fixture (conftest): the GPU, or the CPU under ``ROTPLUGIN_CUDA_TESTS=cpu``, the
check's dry run (``tools/gpu_check.sh --cpu``), where what only a GPU can show (mmcv's CUDA kernels against its CPU
ones, SyncBatchNorm in train mode, host syncs) skips with the reason. The other CUDA tests live beside their CPU
tests: ``test_riroi_align`` (our RiRoIAlign against mmcv's CUDA kernel, values and gradients) and ``test_fields``
(``rotate_fields`` on the GPU equal to the CPU).
"""
import pytest
import torch

from conftest import ROOT
from test_detectors import make_batch
from test_tta import FCOS, ORCNN, RETINA, dota_batch, small_detector, sorted_dets

pytestmark = pytest.mark.cuda

SHIPPED = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").glob("*/*.py"))


@pytest.fixture(autouse=True)
def exact_float32():
    """cuDNN convolutions and CUDA matmuls default to TF32 (10 mantissa bits): the exactness tests here compare
    float32 results, so TF32 is off while they run (the timings of tools/benchmark_gpu.py keep torch's defaults)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _cuda_only(device, what):
    if device.type != "cuda":
        pytest.skip(f"{what}: only a GPU can show it")


# ---------------------------------------------------------------------------------------------------------------
# mmcv's compiled ops that the configs use: the CUDA build against its CPU build
# ---------------------------------------------------------------------------------------------------------------
def test_mmcv_rotated_ops_on_device_match_cpu(device):
    """nms_rotated, box_iou_rotated and RoIAlignRotated (forward and backward) of the mmcv built on the machine."""
    from mmcv.ops import RoIAlignRotated, box_iou_rotated, nms_rotated

    from conftest import random_boxes

    _cuda_only(device, "mmcv's CUDA ops against its CPU ops")
    g = torch.Generator().manual_seed(3)
    boxes, scores, _ = random_boxes(g, 300)
    keep_cpu = nms_rotated(boxes, scores, 0.3)[1]
    keep_dev = nms_rotated(boxes.to(device), scores.to(device), 0.3)[1]
    assert torch.equal(keep_dev.cpu().sort().values, keep_cpu.sort().values)
    iou_cpu = box_iou_rotated(boxes[:50], boxes[50:120])
    torch.testing.assert_close(box_iou_rotated(boxes[:50].to(device), boxes[50:120].to(device)).cpu(), iou_cpu,
                               rtol=0, atol=1e-4)
    feat = torch.randn(2, 8, 40, 40, generator=g)
    rois = torch.cat([torch.randint(0, 2, (60, 1), generator=g).float(), boxes[:60] * 0.2], 1)
    layer = RoIAlignRotated(7, spatial_scale=1.0, sampling_ratio=2, aligned=True, clockwise=False)
    outs, grads = [], []
    for dev in ("cpu", device):
        f = feat.to(dev).requires_grad_()
        out = layer(f, rois.to(dev))
        out.backward(torch.ones_like(out))
        outs.append(out.detach().cpu())
        grads.append(f.grad.cpu())
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-4)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# equivariance and TTA on the device
# ---------------------------------------------------------------------------------------------------------------
def test_backbone_fpn_is_exactly_equivariant_on_device(device):
    """EquivariantResNet-50 C8 + EquivariantFPN on a 129² canvas: 90°/180°/270° to float32 rounding."""
    from rotplugin.equivariance import measure_equivariance
    from rotplugin.presets import random_backbone_neck

    pyramid = random_backbone_neck(depth=50, orientation=8, seed=0)
    for m in pyramid.modules:
        m.to(device)
    image = torch.rand(1, 3, 129, 129, generator=torch.Generator().manual_seed(0)).to(device)
    report = measure_equivariance(pyramid.extract, image, pyramid.field_types, pyramid.strides, angles=[90, 180, 270])
    worst = report.worst()
    assert worst < 1e-4, report.table()


@pytest.mark.parametrize("config", [RETINA, ORCNN, FCOS])
def test_feature_tta_equals_image_tta_on_device(config, device):
    from rotplugin.boxes import match_detections
    from rotplugin.models import FeatureRotationTTAModel, ImageRotationTTAModel

    det = small_detector(config).to(device)
    kw = dict(angles=[0, 90, 180, 270], score_thr=0.002, iou_thr=0.1)
    feat = FeatureRotationTTAModel(det, **kw).test_step(dota_batch())[0]
    img = ImageRotationTTAModel(det, **kw).test_step(dota_batch())[0]
    a, b = (tuple(t.cpu() for t in sorted_dets(s)) for s in (feat, img))
    assert feat.pred_instances.scores.device.type == device.type
    assert min(len(a[0]), len(b[0])) >= 100, f"too few detections to compare ({len(a[0])}, {len(b[0])})"
    frac, box_diff, score_diff = match_detections(a, b)
    assert frac >= 0.99 and box_diff <= 1e-3 and score_diff <= 1e-4, (frac, box_diff, score_diff)


# ---------------------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", SHIPPED)
def test_one_training_step_of_each_shipped_config(config, device, monkeypatch):
    """The config's own model and optimiser wrapper (AMP configs: float16 autocast with loss scaling on the GPU,
    bfloat16 on the CPU, with the Float32BoxCodingHook's patch), one train_step at 257²: finite losses, the
    backbone's weights change. On the CPU the model is shrunk (R18 C4), on the GPU it is the config's."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.optim.optimizer import amp_optimizer_wrapper
    from mmrotate.registry import MODELS

    from rotplugin.models.mixed_precision import float32_box_coding
    from rotplugin.presets import load_config, shrink_detector_config

    cfg = load_config(str(ROOT / config))
    if device.type == "cpu":
        cfg = shrink_detector_config(cfg)
        monkeypatch.setattr(amp_optimizer_wrapper, "is_cuda_available", lambda: True)   # as in test_amp
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.to(device).train()
    amp = cfg.optim_wrapper.type == "AmpOptimWrapper"
    if amp:
        float32_box_coding(model)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    before = [p.detach().clone() for p in model.backbone.parameters() if p.requires_grad]
    log_vars = model.train_step(make_batch(257), wrapper)
    assert all(torch.isfinite(torch.as_tensor(v)) for v in log_vars.values()), log_vars
    after = [p.detach() for p in model.backbone.parameters() if p.requires_grad]
    assert all(p.device.type == device.type for p in after)
    changed = sum(not torch.equal(a, b) for a, b in zip(after, before))
    # float16 loss scaling may skip the very first step (inf gradients at scale 2^16): then nothing moves, by design
    skipped = amp and device.type == "cuda" and changed == 0 and wrapper.loss_scaler.get_scale() < 65536.0
    assert skipped or changed >= 0.9 * len(before), f"{changed} of {len(before)} backbone tensors changed"


def test_field_batch_norm_under_sync_bn_in_a_one_gpu_group(device, tmp_path):
    """mmengine's sync_bn='torch': FieldBatchNorm's inner BatchNorm3d becomes SyncBatchNorm, which in a 1-process
    NCCL group trains like the plain batch norm (same outputs, running statistics and gradients)."""
    import torch.distributed as dist

    from rotplugin.models import EquivariantResNet

    _cuda_only(device, "SyncBatchNorm in train mode (CUDA only)")
    torch.manual_seed(0)
    plain = EquivariantResNet(depth=18, orientation=4, stem_channels=8, base_channels=8).to(device).train()
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(
        EquivariantResNet(depth=18, orientation=4, stem_channels=8, base_channels=8)).to(device).train()
    synced.load_state_dict(plain.state_dict())
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        x = torch.randn(2, 3, 65, 65, device=device)
        outs = [m(x) for m in (plain, synced)]
        for a, b in zip(*outs):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
        sum(o.sum() for o in outs[0]).backward()
        sum(o.sum() for o in outs[1]).backward()
    finally:
        dist.destroy_process_group()
    for (name, a), b in zip(plain.state_dict().items(), synced.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    for (name, a), b in zip(plain.named_parameters(), synced.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-4, msg=name)


def test_backbone_neck_training_step_makes_no_host_sync(device):
    """A forward + backward of EquivariantResNet-50 C8 + EquivariantFPN in train mode (batch norm statistics
    included) under ``torch.cuda.set_sync_debug_mode('error')``: any implicit device-to-host sync raises."""
    from rotplugin.presets import random_backbone_neck

    _cuda_only(device, "implicit host syncs")
    pyramid = random_backbone_neck(depth=50, orientation=8, seed=0)
    for m in pyramid.modules:
        m.to(device).train()
    model = pyramid.extract
    x = torch.randn(2, 3, 257, 257, device=device)
    sum(o.float().mean() for o in model(x)).backward()     # warm-up: cuDNN autotuning, allocator
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = sum(o.float().mean() for o in model(x))
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()

