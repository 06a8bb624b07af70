"""Every config in configs/ builds; small variants train one step and predict on CPU."""
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import DEMO_JPG, ROOT

CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.py"))


def build_detector(cfg):
    from mmrotate.registry import MODELS

    return MODELS.build(cfg.model)


@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_builds(config):
    from rotplugin.models import EquivariantDetDataPreprocessor, EquivariantFPN, EquivariantResNet
    from rotplugin.presets import load_config

    cfg = load_config(str(ROOT / config))
    model = build_detector(cfg)
    assert isinstance(model.data_preprocessor, EquivariantDetDataPreprocessor)
    assert isinstance(model.backbone, EquivariantResNet)
    assert isinstance(model.neck, EquivariantFPN)
    # the canvas must cover every stride of the neck
    assert model.data_preprocessor.max_stride >= model.neck.max_stride
    assert cfg.train_dataloader.dataset.type.endswith("DOTADataset")
    if "redet" in config:  # ReFPN-compatible neck, rotplugin's RiRoIAlign in the second (rotated RoI) stage
        from rotplugin.models import RiRoIExtractor
        from rotplugin.ops import RiRoIAlignRotated

        assert model.neck.upsample_mode == "nearest"
        extractor = model.roi_head.bbox_roi_extractor[1]
        assert isinstance(extractor, RiRoIExtractor)
        assert all(isinstance(layer, RiRoIAlignRotated) for layer in extractor.roi_layers)
        assert extractor.roi_layers[0].num_orientations == model.backbone.orientation


def make_batch(size=129, seed=0):
    """A real DOTA crop (or noise when ../shared is absent) with two oriented boxes (cx, cy, w, h, angle rad)."""
    import cv2
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    from mmrotate.structures.bbox import RotatedBoxes

    if DEMO_JPG.exists():
        img = cv2.imread(str(DEMO_JPG))[300:300 + size, 400:400 + size]
    else:
        img = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    sample = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size), scale_factor=(1.0, 1.0),
                                         img_id="crop", img_path="crop.png"))
    sample.gt_instances = InstanceData(
        bboxes=RotatedBoxes(torch.tensor([[40.0, 50.0, 30.0, 12.0, 0.3], [90.0, 80.0, 24.0, 20.0, -0.7]])),
        labels=torch.tensor([0, 3]))
    sample.ignored_instances = InstanceData(bboxes=RotatedBoxes(torch.zeros(0, 5)), labels=torch.zeros(0).long())
    return dict(inputs=[torch.from_numpy(img).permute(2, 0, 1).contiguous()], data_samples=[sample])


@pytest.mark.parametrize("config", CONFIGS)
def test_small_variant_trains_and_predicts_on_cpu(config):
    from rotplugin.presets import load_config, shrink_detector_config

    torch.manual_seed(0)
    cfg = shrink_detector_config(load_config(str(ROOT / config)))
    model = build_detector(cfg)
    model.init_weights()
    model.train()
    data = model.data_preprocessor(make_batch(), True)
    assert tuple(data["inputs"].shape[-2:]) == (129, 129)  # 129 ≡ 1 (mod 128 / 64): the equivariant canvas
    assert data["data_samples"][0].batch_input_shape == (129, 129)
    losses = model(**data, mode="loss")
    loss, log_vars = model.parse_losses(losses)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    # frozen_stages=1 (the DOTA configs, ImageNet-style init) keeps the stem frozen; -1 (the demo, from scratch) not
    assert model.backbone.conv1.conv.weights.requires_grad == (cfg.model.backbone.frozen_stages < 0)
    grad = model.backbone.layer2[0].conv1.conv.weights.grad
    assert grad is not None and grad.abs().sum() > 0, "no gradient reached the backbone"
    model.eval()
    with torch.no_grad():
        results = model.test_step(make_batch())
    pred = results[0].pred_instances
    assert pred.bboxes.shape[-1] == 5 and len(pred.scores) == len(pred.labels) == len(pred.bboxes)
