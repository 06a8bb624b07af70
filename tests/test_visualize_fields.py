"""rotplugin.visualization and tools/visualize_fields.py: orientation pictures of regular fields, the field-rotation
figures (written, not blank, exact at 90° on the canvas), rotated-box drawing, and clear errors."""
import math

import numpy as np
import pytest
import torch

from rotplugin import visualization as vis
from rotplugin.equivariance import feature_pyramid
from rotplugin.fields import fibre_operator
from rotplugin.nn.field_layers import make_gspace, regular_field_type, trivial_field_type
from conftest import load_tool

SIZE = 129  # ≡ 1 (mod 128): the equivariant canvas of strides up to 128


def field_type(n, fields=3, flip=False):
    gs = make_gspace(n, flip)
    return regular_field_type(gs, fields * gs.regular_repr.size)


def roll_fields(x, n):
    """Roll every regular C_N field's channels by +1 (f'_k = f_{k-1}), written out without the library."""
    b, c, h, w = x.shape
    return torch.roll(x.reshape(b, c // n, n, h, w), 1, dims=2).reshape(b, c, h, w)


def png(path):
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, f"{path} is not a readable PNG"
    return img


# ---------------------------------------------------------------------------------------------------------------
# the orientation of a regular field
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [4, 8])
def test_phase_turns_by_plus_2pi_over_n_when_channels_roll_by_plus_one(n):
    ft = field_type(n)
    x = torch.randn(2, ft.size, 5, 6, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    rolled = roll_fields(x, n)
    # the project's convention: the rotation by 360/N rolls each regular field by +1
    assert torch.equal(fibre_operator(ft, 360.0 / n).apply(x), rolled)
    z, z_rolled = vis.orientation_coefficients(x, ft), vis.orientation_coefficients(rolled, ft)
    assert z.shape == (2, 3, 5, 6) and z.dtype == torch.complex128
    step = complex(math.cos(2 * math.pi / n), math.sin(2 * math.pi / n))
    assert torch.allclose(z_rolled, z * step, atol=1e-12)
    assert not torch.allclose(z_rolled, z * step.conjugate(), atol=1e-3)  # the sign is +, not -
    assert torch.allclose(z_rolled.abs(), z.abs(), atol=1e-12)
    # combined fields turn alike ("sum" and "max")
    for combine in ("sum", "max"):
        assert torch.allclose(vis.orientation_field(rolled, ft, combine=combine),
                              vis.orientation_field(x, ft, combine=combine) * step, atol=1e-12)


def test_first_fourier_coefficient_of_one_hot_fields_and_their_hue():
    n = 8
    ft = field_type(n, fields=1)
    x = torch.zeros(ft.size, 1, n)
    for k in range(n):
        x[k, 0, k] = 2.0  # pixel k: orientation channel k only
    z = vis.orientation_field(x, ft)
    expected = 2.0 * torch.exp(2j * math.pi * torch.arange(n, dtype=torch.float64) / n)
    assert torch.allclose(z[0], expected, atol=1e-12)
    rgb = vis.orientation_rgb(z, scale=2.0)
    assert np.allclose(rgb[0, 0], [1, 0, 0])          # k = 0: hue 0, red
    assert np.allclose(rgb[0, 2], [0.5, 1, 0])        # k = N/4 (+90°): hue 1/4, yellow-green
    assert np.allclose(rgb[0, 4], [0, 1, 1])          # k = N/2: cyan
    assert np.allclose(rgb[0, 6], [0.5, 0, 1])        # k = 3N/4: violet
    assert np.allclose(vis.orientation_rgb(z, scale=4.0).max(-1), 0.5)  # brightness |z| / scale


def test_dihedral_regular_fields_have_two_cycles_and_turn_with_rotations(tmp_path):
    ft = field_type(4, fields=2, flip=True)
    cycles = vis.orientation_channels(ft)
    assert [c.shape for c in cycles] == [(2, 4), (2, 4)]
    assert sorted(np.concatenate([c.ravel() for c in cycles]).tolist()) == list(range(16))
    x = torch.randn(1, ft.size, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    turned = fibre_operator(ft, 90.0).apply(x)
    assert torch.allclose(vis.orientation_coefficients(turned, ft), vis.orientation_coefficients(x, ft) * 1j,
                          atol=1e-12)
    path = vis.channel_heatmaps_figure(str(tmp_path / "d4.png"), {"x": x, "turned": turned}, ft, fields=[1])
    assert png(path).std() > 20
    assert vis.orientation_picture(x, ft).shape == (3, 3, 3)


def test_non_regular_fields_and_bad_selections_are_refused():
    gs = make_gspace(4)
    with pytest.raises(ValueError, match="field 0 .* not a regular field"):
        vis.orientation_channels(trivial_field_type(gs, 2))
    from escnn.nn import FieldType

    mixed = FieldType(gs, [gs.regular_repr, gs.irrep(1)])
    with pytest.raises(ValueError, match="field 1 .* not a regular field"):
        vis.orientation_channels(mixed)
    ft = field_type(4)
    x = torch.randn(1, ft.size, 3, 3)
    with pytest.raises(ValueError, match=r"fields \[3\] out of range.*3 fields"):
        vis.orientation_coefficients(x, ft, fields=[0, 3])
    with pytest.raises(ValueError, match="channels"):
        vis.orientation_coefficients(x[:, :-1], ft)
    with pytest.raises(ValueError, match="combine"):
        vis.orientation_field(x, ft, combine="mean")
    with pytest.raises(ValueError, match="no rotations"):
        vis.orientation_channels(regular_field_type(make_gspace(1), 2))


# ---------------------------------------------------------------------------------------------------------------
# the field-rotation figures of a small model
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_model():
    from rotplugin.models import EquivariantFPN, EquivariantResNet

    torch.manual_seed(0)
    backbone = EquivariantResNet(depth=18, orientation=4, stem_channels=16, base_channels=16).eval()
    neck = EquivariantFPN(in_channels=backbone.out_channels, out_channels=32, num_outs=5, orientation=4,
                          start_level=1, add_extra_convs="on_input").eval()
    g = torch.Generator().manual_seed(1)
    for m in backbone.modules():  # batch norm that is not the identity
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)

    def extract_feat(x):
        return neck(backbone(x))

    return extract_feat, neck.out_field_types, neck.out_strides


@pytest.fixture(scope="module")
def scene():
    from rotplugin.data.dota_synth import render_scene

    img, _ = render_scene(np.random.default_rng(3), SIZE)
    x = (torch.from_numpy(img[..., ::-1].copy()).float() - 120.0) / 58.0
    return x.permute(2, 0, 1)[None].contiguous()


@pytest.fixture(scope="module")
def plots_90(small_model, scene, tmp_path_factory):
    model, fts, strides = small_model
    out = tmp_path_factory.mktemp("fields90")
    return vis.visualize_field_rotation(model, scene, fts, strides, str(out), 90, levels=[0, 2], fields=[0, 5]), out


def test_figures_are_written_and_not_blank(plots_90):
    plots, out = plots_90
    names = sorted(p.split("/")[-1] for p in plots.paths)
    assert names == ["level0_s8_channels.png", "level0_s8_orientation.png", "level2_s32_channels.png",
                     "level2_s32_orientation.png"]
    for path in plots.paths:
        img = png(path)
        assert min(img.shape[:2]) > 300
        assert img.std() > 20, f"{path} looks blank"
        assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50, f"{path} has too few colours"
    for lvl, pics in plots.pictures.items():
        for name in ("F(I)", "F(rot I)", "rotate(F(I))", "image", "rotated_image"):
            assert pics[name].std() > 0.05, f"level {lvl}: the picture of {name} is flat"
            assert pics[name].shape[-1] == 3 and 0 <= pics[name].min() and pics[name].max() <= 1
        assert len(np.unique(np.round(pics["F(I)"], 2).reshape(-1, 3), axis=0)) > 10  # several hues, not one


def test_difference_vanishes_at_90_degrees_and_hues_agree(plots_90):
    plots, _ = plots_90
    assert plots.canvas_shape == (SIZE, SIZE) and plots.strides == {0: 8, 2: 32}
    for lvl in (0, 2):
        assert plots.errors[lvl] < 1e-4
        pics, zs = plots.pictures[lvl], plots.orientation[lvl]
        assert pics["diff"].max() < 1e-4 and abs(pics["diff"].max() - plots.errors[lvl]) < 1e-12
        assert np.abs(pics["F(rot I)"] - pics["rotate(F(I))"]).max() < 1e-3
        # the orientation field of the rotated image is that of the image, moved by the rotation and turned by +90°
        z0, z1 = zs["F(I)"], zs["F(rot I)"]
        moved = torch.rot90(z0, 1, dims=(-2, -1)) * 1j
        tol = 1e-4 * z1.abs().max()
        assert (moved - z1).abs().max() < tol
        assert (torch.rot90(z0, 1, dims=(-2, -1)) * -1j - z1).abs().max() > 100 * tol  # not the other way round
        strong = z1.abs() > 0.2 * z1.abs().max()
        hue_turn = torch.angle(z1[strong] / torch.rot90(z0, 1, dims=(-2, -1))[strong])
        assert torch.allclose(hue_turn, torch.full_like(hue_turn, math.pi / 2), atol=1e-3)


def test_without_the_canvas_the_difference_shows(small_model, scene, tmp_path):
    model, fts, strides = small_model
    plots = vis.visualize_field_rotation(model, scene[..., :128, :128], fts, strides, str(tmp_path), 90,
                                         levels=[1], canvas=False, channel_maps=False)
    assert plots.canvas_shape == (128, 128)
    assert plots.errors[1] > 1e-2
    assert plots.pictures[1]["diff"].std() > 1e-3
    assert [p.split("/")[-1] for p in plots.paths] == ["level1_s16_orientation.png"]


def test_angles_between_orientation_steps_need_a_rule(small_model, scene, tmp_path):
    model, fts, strides = small_model
    with pytest.raises(ValueError, match="fibre_interp"):
        vis.visualize_field_rotation(model, scene, fts, strides, str(tmp_path), 30, levels=[0])
    plots = vis.visualize_field_rotation(model, scene, fts, strides, str(tmp_path), 30, levels=[0],
                                         fibre_interp="linear", channel_maps=False)
    assert 1e-4 < plots.errors[0] < 10 and png(plots.paths[0]).std() > 20


def test_bad_arguments_give_clear_errors(small_model, scene, tmp_path):
    model, fts, strides = small_model
    with pytest.raises(ValueError, match=r"levels \[5\] out of range.*5 levels"):
        vis.visualize_field_rotation(model, scene, fts, strides, str(tmp_path), levels=[0, 5])
    with pytest.raises(ValueError, match=r"fields \(level 0\) \[8\] out of range.*8 fields"):
        vis.visualize_field_rotation(model, scene, fts, strides, str(tmp_path), levels=[0], fields=[1, 8])
    with pytest.raises(ValueError, match="4 field types for 5 strides"):
        vis.visualize_field_rotation(model, scene, fts[:4], strides, str(tmp_path))
    with pytest.raises(ValueError, match="has 4 levels"):
        vis.visualize_field_rotation(lambda x: model(x)[:4], scene, fts, strides, str(tmp_path), levels=[0])
    with pytest.raises(ValueError, match="image must be"):
        vis.visualize_field_rotation(model, scene[0, 0], fts, strides, str(tmp_path))
    with pytest.raises(ValueError, match="give a model or features"):
        vis.visualize_field_rotation(None, scene, fts, strides, str(tmp_path))
    assert not list(tmp_path.iterdir())  # nothing written on errors
    # precomputed features instead of a model
    from rotplugin.fields import rotate_grid

    feats = (model(scene), model(rotate_grid(scene, 90)))
    plots = vis.visualize_field_rotation(None, scene, fts, strides, str(tmp_path), 90, levels=[3],
                                         features=feats, channel_maps=False, prefix="pre_")
    assert plots.errors[3] < 1e-4 and [p.split("/")[-1] for p in plots.paths] == ["pre_level3_s64_orientation.png"]


def test_feature_pyramid_needs_field_types():
    from torch import nn

    class Detector(nn.Module):
        def __init__(self, neck):
            super().__init__()
            self.backbone, self.neck = nn.Identity(), neck

        def extract_feat(self, x):
            return self.neck(self.backbone(x))

    with pytest.raises(ValueError, match="drawing its fields needs .*Conv2d has no out_field_types / out_strides"):
        feature_pyramid(Detector(nn.Conv2d(3, 3, 1)), "drawing its fields")
    neck = nn.Identity()
    neck.out_field_types, neck.out_strides, neck.max_stride = [field_type(4)], [8], 8
    det = Detector(neck)
    pyramid = feature_pyramid(det)
    assert pyramid.extract == det.extract_feat and pyramid.strides == [8] and pyramid.max_stride == 8
    assert pyramid.field_types == [field_type(4)]
    bare = nn.Identity()
    bare.out_field_types, bare.out_strides = [field_type(4)] * 2, [4, 8]
    assert feature_pyramid(bare) == type(pyramid)(bare, [field_type(4)] * 2, [4, 8], 8)


# ---------------------------------------------------------------------------------------------------------------
# rotated boxes
# ---------------------------------------------------------------------------------------------------------------

def test_draw_rboxes():
    img = np.zeros((100, 120, 3), np.uint8)
    boxes = torch.tensor([[60.0, 50.0, 60.0, 20.0, 0.0], [30.0, 30.0, 20.0, 10.0, math.pi / 4]])
    out = vis.draw_rboxes(img, boxes, labels=[0, 1], scores=[0.9, 0.1], class_names=["plane", "ship"],
                          score_thr=0.5, show_text=False)
    assert not img.any()                                 # the input is not modified
    assert tuple(out[40, 60]) == vis.label_colour(0)     # top edge y = 50 - 10 of the first box
    assert tuple(out[60, 45]) == vis.label_colour(0)     # bottom edge
    assert not out[50, 60].any() and not out[30, 30].any()  # inside / the skipped low-score box
    assert not out[:20].any()
    with_text = vis.draw_rboxes(img, boxes, labels=[0, 1], scores=[0.9, 0.1], class_names=["plane", "ship"],
                                score_thr=0.5)
    assert with_text[20:40].any()                       # the label above the box
    # a quarter turn of the box (le90 t = -90°) swaps its extent
    turned = vis.draw_rboxes(img, np.array([[60.0, 50.0, 60.0, 20.0, -math.pi / 2]]), colour=(255, 255, 255))
    assert turned[20, 50].all() and turned[80, 70].all() and not turned[50, 40].any()
    with pytest.raises(ValueError, match="2 entries for 1 boxes"):
        vis.draw_rboxes(img, boxes[:1], labels=[0, 1])
    with pytest.raises(ValueError, match="BGR uint8"):
        vis.draw_rboxes(img.astype(np.float32), boxes)
    with pytest.raises(ValueError, match=r"\(n, 5\)"):
        vis.draw_rboxes(img, torch.zeros(2, 4))


# ---------------------------------------------------------------------------------------------------------------
# the tool
# ---------------------------------------------------------------------------------------------------------------

def test_tool_writes_pictures_and_refuses_missing_files(tmp_path, capsys):
    import json

    main = load_tool("visualize_fields").main

    out = tmp_path / "out"
    assert main(["--random", "--orientation", "4", "--size", "120", "--levels", "1", "--fields", "0",
                 "--out-dir", str(out)]) == 0
    text = capsys.readouterr().out
    assert "RANDOMLY INITIALISED" in text and ("synthetic scene" in text or "demo.jpg" in text)
    summary = json.loads((out / "fields.json").read_text())
    assert summary["canvas_shape"] == [129, 129] and summary["levels"][0]["max_relative_error"] < 1e-4
    for name in summary["files"]:
        assert png(out / name).std() > 20
    with pytest.raises(SystemExit, match="image file not found: /nonexistent.png"):
        main(["--random", "--orientation", "4", "--image", "/nonexistent.png", "--out-dir", str(out)])
    with pytest.raises(SystemExit, match="config file not found"):
        main(["--config", str(tmp_path / "missing.py"), "--out-dir", str(out)])


def test_tool_with_a_detector_config_and_checkpoint(tmp_path, capsys):
    import json

    from mmrotate.registry import MODELS

    from conftest import ROOT
    from rotplugin.presets import load_config, shrink_detector_config
    tool = load_tool("visualize_fields")
    build_model = tool.build_model
    main = tool.main

    cfg = shrink_detector_config(
        load_config(str(ROOT / "configs/rotated_retinanet/rotated-retinanet-rbox-le90_er50-c8_efpn_1x_dota.py")))
    config = tmp_path / "small.py"
    cfg.dump(str(config))
    torch.manual_seed(5)
    trained = MODELS.build(cfg.model)
    ckpt = tmp_path / "small.pth"
    torch.save({"state_dict": trained.state_dict(), "meta": {}}, str(ckpt))

    model, what = build_model(str(config), str(ckpt), 8, 18, seed=0)  # another seed: the weights must be loaded
    assert "with weights" in what
    loaded = dict(model.named_parameters())  # (escnn's expanded-filter buffers are caches, rebuilt in eval mode)
    assert all(torch.equal(v, loaded[k]) for k, v in trained.named_parameters())

    out = tmp_path / "out"
    assert main(["--config", str(config), "--checkpoint", str(ckpt), "--size", "100", "--levels", "0",
                 "--fields", "1", "--out-dir", str(out)]) == 0
    summary = json.loads((out / "fields.json").read_text())
    assert summary["levels"] == [{"level": 0, "stride": 8, "max_relative_error": summary["levels"][0]
                                  ["max_relative_error"]}] and summary["levels"][0]["max_relative_error"] < 1e-4
    assert sorted(summary["files"]) == ["level0_s8_channels.png", "level0_s8_orientation.png"]
    with pytest.raises(SystemExit, match="checkpoint file not found"):
        main(["--config", str(config), "--checkpoint", str(tmp_path / "none.pth"), "--out-dir", str(out)])
    with pytest.raises(SystemExit, match="--checkpoint needs --config"):
        main(["--checkpoint", str(ckpt), "--out-dir", str(out)])
    with pytest.raises(SystemExit, match="--random takes no"):
        main(["--random", "--checkpoint", str(ckpt), "--out-dir", str(out)])
    partial = tmp_path / "partial.pth"
    state = trained.state_dict()
    torch.save({"state_dict": {k: v for k, v in state.items() if not k.startswith("neck.")}}, str(partial))
    with pytest.raises(SystemExit, match="does not fit the model.*missing keys.*neck"):
        main(["--config", str(config), "--checkpoint", str(partial), "--out-dir", str(out)])


def test_continuous_groups_have_no_orientation_channels():
    from escnn import gspaces
    from escnn.nn import FieldType

    gs = gspaces.rot2dOnR2(-1, maximum_frequency=2)
    with pytest.raises(ValueError, match="only finite rotation groups"):
        vis.orientation_channels(FieldType(gs, [gs.irrep(1)]))
    with pytest.raises(TypeError, match="FieldType"):
        vis.orientation_channels("regular")


def test_non_square_canvas_and_the_detector_helper(small_model, scene, tmp_path):
    from torch import nn

    model, fts, strides = small_model

    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Identity()
            self.neck = nn.Identity()
            self.neck.out_field_types, self.neck.out_strides, self.neck.max_stride = fts, strides, max(strides)

        def extract_feat(self, x):
            return model(x)

    wide = torch.cat([scene, scene.flip(-1)], -1)[..., :200]  # 129 x 200 -> canvas 129 x 257
    plots = vis.visualize_detector_fields(Detector(), wide, str(tmp_path), 90, levels=[1], channel_maps=False)
    assert plots.canvas_shape == (129, 257) and plots.errors[1] < 1e-4
    z0, z1 = plots.orientation[1]["F(I)"], plots.orientation[1]["F(rot I)"]
    assert z0.shape == (9, 17) and z1.shape == (17, 9)
    assert (torch.rot90(z0, 1, dims=(-2, -1)) * 1j - z1).abs().max() < 1e-4 * z1.abs().max()
