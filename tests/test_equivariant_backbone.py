"""EquivariantResNet / EquivariantFPN: exact equivariance on the canvas, export, construction errors."""
import pytest
import torch

from conftest import DEMO_JPG, require_file
from rotplugin.canvas import equivariant_canvas_shape
from rotplugin.equivariance import max_relative_error, measure_equivariance, pad_image
from rotplugin.io import image_to_tensor, load_image
from rotplugin.models import EquivariantFPN, EquivariantResNet

TOL = 1e-5


def small_backbone(orientation=4, flip=False, **kw):
    torch.manual_seed(0)
    return EquivariantResNet(depth=18, orientation=orientation, flip=flip, stem_channels=16, base_channels=16,
                             **kw).eval()


def small_fpn(backbone, **kw):
    torch.manual_seed(1)
    kw.setdefault("add_extra_convs", "on_input")
    return EquivariantFPN(in_channels=backbone.out_channels, out_channels=32, num_outs=5,
                          orientation=backbone.orientation, flip=backbone.flip, start_level=1, **kw).eval()


def randomise_bn(model):
    """Non-trivial running statistics so that eval-mode batch norm is not the identity."""
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def pyramid(backbone, fpn):
    return lambda x: fpn(backbone(x))


@pytest.mark.parametrize("orientation,flip", [(4, False), (8, False), (4, True)])
def test_backbone_and_fpn_exact_on_random_canvas(orientation, flip):
    bb = randomise_bn(small_backbone(orientation, flip))
    fpn = small_fpn(bb)
    image = torch.randn(1, 3, 129, 129)  # 129 ≡ 1 (mod 128): equivariant canvas for P7
    flips = (False, True) if flip else (False,)
    rep_bb = measure_equivariance(bb, image, bb.out_field_types, bb.out_strides, flips=flips)
    rep_fpn = measure_equivariance(pyramid(bb, fpn), image, fpn.out_field_types, fpn.out_strides, flips=flips)
    assert len(rep_bb.errors) == 3 * len(flips)
    assert rep_bb.worst() <= TOL, rep_bb.table()
    assert rep_fpn.worst() <= TOL, rep_fpn.table()


def test_exact_on_real_dota_image_and_approximate_without_canvas():
    img, _ = load_image(str(require_file(DEMO_JPG)), (256, 256))
    image = image_to_tensor(img)
    bb = randomise_bn(small_backbone(8))
    fpn = small_fpn(bb)
    model = pyramid(bb, fpn)
    exact = measure_equivariance(model, pad_image(image, 128, canvas=True), fpn.out_field_types, fpn.out_strides)
    assert exact.canvas_shape == (257, 257)
    assert exact.worst() <= TOL, exact.table()
    # Plain padding (256 ≡ 0 mod 128): the strided layers sample asymmetric grids; equivariance is only approximate.
    approx = measure_equivariance(model, pad_image(image, 128, canvas=False), fpn.out_field_types, fpn.out_strides)
    assert approx.canvas_shape == (256, 256)
    assert approx.worst() > 100 * TOL, approx.table()


def test_exact_on_odd_non_square_image():
    bb = randomise_bn(small_backbone(4))
    fpn = small_fpn(bb)
    torch.manual_seed(5)
    image = pad_image(torch.randn(1, 3, 300, 420), 128)
    assert tuple(image.shape[-2:]) == equivariant_canvas_shape((300, 420), 128) == (385, 513)
    rep = measure_equivariance(pyramid(bb, fpn), image, fpn.out_field_types, fpn.out_strides)
    assert rep.worst() <= TOL, rep.table()


def test_nearest_upsampling_is_only_approximately_equivariant_on_canvas():
    bb = randomise_bn(small_backbone(4))
    fpn = small_fpn(bb, upsample_mode="nearest")
    image = torch.randn(1, 3, 129, 129)
    rep = measure_equivariance(pyramid(bb, fpn), image, fpn.out_field_types, fpn.out_strides, angles=(90,))
    assert rep.worst() > 1e-3


def test_outputs_are_regular_fields_with_resnet_channel_counts():
    bb = EquivariantResNet(depth=50, orientation=8, out_indices=(0, 1, 2, 3))
    assert bb.out_channels == [256, 512, 1024, 2048]
    assert bb.out_strides == [4, 8, 16, 32]
    assert [len(ft) for ft in bb.out_field_types] == [32, 64, 128, 256]
    assert all(r.name == "regular" for ft in bb.out_field_types for r in ft.representations)
    outs = bb.eval()(torch.randn(1, 3, 65, 65))
    assert [tuple(o.shape) for o in outs] == [(1, 256, 17, 17), (1, 512, 9, 9), (1, 1024, 5, 5), (1, 2048, 3, 3)]


@pytest.mark.parametrize("flip", [False, True])
def test_export_matches_escnn_modules(flip):
    bb = randomise_bn(small_backbone(4, flip))
    fpn = small_fpn(bb)
    image = torch.randn(2, 3, 97, 97)
    with torch.no_grad():
        ref = fpn(bb(image))
        bb_plain, fpn_plain = bb.export().eval(), fpn.export().eval()
        out = fpn_plain(bb_plain(image))
    for name, module in list(bb_plain.named_modules()) + list(fpn_plain.named_modules()):
        assert not type(module).__module__.startswith("escnn"), name
    for r, o in zip(ref, out):
        assert max_relative_error(o, r) <= TOL


def test_frozen_stages_and_norm_eval():
    bb = small_backbone(4, frozen_stages=1, norm_eval=True).train()
    assert not any(p.requires_grad for p in bb.conv1.parameters())
    assert not any(p.requires_grad for p in bb.layer1.parameters())
    assert all(p.requires_grad for p in bb.layer2.parameters())
    assert not any(m.training for m in bb.modules() if isinstance(m, torch.nn.BatchNorm3d))


def test_with_cp_gives_same_gradients():
    torch.manual_seed(0)
    a = small_backbone(4).train()
    b = small_backbone(4, with_cp=True).train()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 65, 65)
    for m in (a, b):
        sum(o.square().mean() for o in m(x)).backward()
    ga = a.layer2[0].conv1.conv.weights.grad
    gb = b.layer2[0].conv1.conv.weights.grad
    assert ga is not None and torch.allclose(ga, gb, atol=1e-6)


def test_bad_input_errors():
    with pytest.raises(KeyError, match="invalid depth 42"):
        EquivariantResNet(depth=42)
    with pytest.raises(ValueError, match="not a whole number of regular fields"):
        EquivariantResNet(depth=18, orientation=6, stem_channels=64)
    with pytest.raises(ValueError, match="orientation must be a positive integer"):
        EquivariantResNet(depth=18, orientation=0)
    bb = small_backbone(4, require_equivariant_canvas=True)
    with pytest.raises(ValueError, match=r"expects images of shape \(B, 3, H, W\)"):
        bb(torch.randn(1, 4, 65, 65))
    with pytest.raises(ValueError, match="height 64 is not an equivariant canvas.*pad to 65"):
        bb(torch.randn(1, 3, 64, 65))
    with pytest.raises(ValueError, match="out_channels"):
        EquivariantFPN(in_channels=[64, 128], out_channels=30, num_outs=2, orientation=4)
    with pytest.raises(ValueError, match="upsample_mode"):
        EquivariantFPN(in_channels=[64, 128], out_channels=32, num_outs=2, orientation=4, upsample_mode="bicubic")
    with pytest.raises(ValueError, match="start_level"):  # mmdet's FPN would build no level and fail in forward
        EquivariantFPN(in_channels=[64, 128], out_channels=32, num_outs=2, orientation=4, start_level=2)


# (start_level, end_level, num_outs, add_extra_convs): end_level is inclusive, as in mmdet's FPN; -1 and the last
# input (3) both mean "up to the last input", the only case with extra levels
FPN_LEVELS = [(0, -1, 4, False), (1, -1, 5, "on_input"), (1, -1, 6, False), (2, -1, 4, "on_lateral"),
              (0, 3, 5, "on_output"), (0, 2, 3, False), (1, 2, 2, "on_input"), (1, 1, 1, False), (0, 0, 1, True)]


@pytest.mark.parametrize("start_level, end_level, num_outs, add_extra_convs", FPN_LEVELS)
def test_fpn_levels_follow_mmdet(start_level, end_level, num_outs, add_extra_convs):
    from mmdet.models.necks import FPN

    in_channels, out_channels = [16, 32, 64, 128], 32  # C4: whole regular fields
    kw = dict(in_channels=in_channels, out_channels=out_channels, num_outs=num_outs, start_level=start_level,
              end_level=end_level, add_extra_convs=add_extra_convs)
    ref, fpn = FPN(**kw).eval(), EquivariantFPN(orientation=4, **kw).eval()
    assert fpn.backbone_end_level == ref.backbone_end_level and fpn.end_level == ref.end_level == end_level
    assert len(fpn.lateral_convs) == len(ref.lateral_convs)
    assert [c.in_type.size for c in fpn.lateral_convs] == [c.conv.in_channels for c in ref.lateral_convs]
    assert [c.in_type.size for c in fpn.fpn_convs] == [c.conv.in_channels for c in ref.fpn_convs]
    # the backbone pyramid of a 129² equivariant canvas (strides 4 to 32)
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(1, c, n, n, generator=g) for c, n in zip(in_channels, (33, 17, 9, 5))]
    with torch.no_grad():
        want, got = ref(inputs), fpn(inputs)
    assert len(got) == len(want) == num_outs
    assert [tuple(o.shape) for o in got] == [tuple(o.shape) for o in want]
    assert len(fpn.out_strides) == num_outs and fpn.out_strides[0] == (4, 8, 16, 32)[start_level]


# invalid for mmdet's FPN (assertions) and so for EquivariantFPN (ValueError)
BAD_FPN_LEVELS = [(1, -1, 2, False), (0, 3, 3, False), (0, 2, 4, "on_input"), (0, 2, 2, False), (1, 4, 4, False)]


@pytest.mark.parametrize("start_level, end_level, num_outs, add_extra_convs", BAD_FPN_LEVELS)
def test_fpn_level_errors_follow_mmdet(start_level, end_level, num_outs, add_extra_convs):
    from mmdet.models.necks import FPN

    kw = dict(in_channels=[16, 32, 64, 128], out_channels=32, num_outs=num_outs, start_level=start_level,
              end_level=end_level, add_extra_convs=add_extra_convs)
    with pytest.raises(AssertionError):
        FPN(**kw)
    with pytest.raises(ValueError, match="EquivariantFPN: .*(num_outs|end_level)"):
        EquivariantFPN(orientation=4, **kw)


def test_sync_batchnorm_conversion_keeps_field_norms():
    """mmengine's sync_bn='torch' calls SyncBatchNorm.convert_sync_batchnorm: the inner per-field BatchNorm3d
    becomes a SyncBatchNorm with the same parameters and buffers, and (eval mode, CPU) the same outputs."""
    import copy

    bb = randomise_bn(small_backbone(4))
    ref_state = copy.deepcopy(bb.state_dict())
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        ref = bb(x)
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(bb).eval()
    norms = [m for m in synced.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    assert len(norms) == sum(1 for m in synced.modules() if type(m).__name__ == "FieldBatchNorm") > 0
    assert not any(type(m) is torch.nn.BatchNorm3d for m in synced.modules())
    state = synced.state_dict()
    assert state.keys() == ref_state.keys()
    assert all(torch.equal(state[k], ref_state[k]) for k in state)
    with torch.no_grad():
        out = synced(x)
    assert all(torch.equal(a, b) for a, b in zip(out, ref))
    plain = synced.export().eval()
    with torch.no_grad():
        assert all(max_relative_error(a, b) <= TOL for a, b in zip(plain(x), ref))
