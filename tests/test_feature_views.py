"""Feature-rotation views in training (rotplugin.models.feature_views, FeatureRotationViewsHook): one backbone pass,
K rotated views. Against the independent reference: the same detector trained on the image rotated by torch.rot90
(a different backbone pass) with the ground truth rotated alike."""
import math

import pytest
import torch

from conftest import ROOT, dota_train_dataloader, load_tool
from test_detectors import make_batch

RETINA = "configs/rotated_retinanet/rotated-retinanet-rbox-le90_er50-c8_efpn_1x_dota.py"
ORCNN = "configs/oriented_rcnn/oriented-rcnn-le90_er50-c8_efpn_1x_dota.py"
FCOS = "configs/rotated_fcos/rotated-fcos-hbox-le90_er50-c8_efpn_1x_dota.py"


def small(config, orientation=4, seed=0):
    from mmrotate.registry import MODELS

    from rotplugin.presets import load_config, shrink_detector_config

    torch.manual_seed(seed)
    cfg = shrink_detector_config(load_config(str(ROOT / config)), orientation=orientation)
    cfg.model.backbone.update(frozen_stages=-1, norm_eval=False)   # every stage learns, batch statistics
    model = MODELS.build(cfg.model)
    model.init_weights()
    # the heads' fresh init (std 0.01) makes their outputs nearly constant, and so the losses nearly blind to the
    # features; unit-gain layers make them depend on every feature, so that a wrongly rotated pyramid shows
    g = torch.Generator().manual_seed(seed)
    for name in ("bbox_head", "rpn_head", "roi_head"):
        for m in getattr(model, name).modules() if hasattr(model, name) else ():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = m.weight[0].numel()
                with torch.no_grad():
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) / fan_in ** 0.5)
    return cfg, model.train()


def batch(model, size=129):
    data = model.data_preprocessor(make_batch(size), True)
    return data["inputs"], data["data_samples"]


def _total(losses):
    return sum(sum(v) if isinstance(v, (list, tuple)) else v for k, v in losses.items() if "loss" in k)


def _flat(losses):
    return {k: torch.stack([torch.as_tensor(x).float() for x in v]).sum() if isinstance(v, (list, tuple)) else v
            for k, v in losses.items()}


def _backbone_grads(model, loss):
    params = [p for p in model.backbone.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params, allow_unused=True)


def _image_view_loss(model, inputs, samples, angle):
    """The reference: the plain detector's loss on the image rotated by ``angle`` (torch.rot90 about the canvas
    centre: the canvas is square and odd) with its ground truth rotated alike."""
    from rotplugin.models.feature_views import rotate_sample

    k = round(angle / 90) % 4
    canvas = tuple(inputs.shape[-2:])
    rotated = torch.rot90(inputs, k, dims=(-2, -1))
    return type(model).loss(model, rotated, [rotate_sample(s, angle, canvas) for s in samples])


def _assert_losses_close(got, want, rtol):
    got, want = _flat(got), _flat(want)
    assert sorted(got) == sorted(want)
    for key in want:
        a, b = got[key].detach().double(), want[key].detach().double()
        assert torch.allclose(a, b, rtol=rtol, atol=1e-6), (key, a.item(), b.item())


# relative L2 error of the whole backbone gradient. Two-stage detectors: the RoI classification loss's backbone
# gradient is ill-conditioned in float32 (a 1e-6 relative perturbation of the input image moves it by 2e-3 to 5e-3,
# measured at 90°/180°/270° on this model), so its bound is 2e-2; a wrong rotation is off by O(1)
GRAD_RTOL = {RETINA: 1e-3, FCOS: 1e-3, ORCNN: 2e-2}
# the losses: float32 rounding; two-stage: rounding can flip a near-tie of the RPN's NMS or the RoI sampler's IoU
# thresholds, which moves the RoI losses by ~1/512 of one RoI's loss (seen: 4e-4 relative)
LOSS_RTOL = {RETINA: 2e-4, FCOS: 2e-4, ORCNN: 2e-3}


def _assert_grads_close(got, want, rtol):
    pairs = [(a, b) for a, b in zip(got, want) if b is not None]
    assert pairs and all(a is not None for a, _ in pairs)
    a = torch.cat([a.flatten() for a, _ in pairs])
    b = torch.cat([b.flatten() for _, b in pairs])
    assert b.norm() > 0
    err = ((a - b).norm() / b.norm()).item()
    assert err <= rtol, err


@pytest.mark.parametrize("config", [RETINA, ORCNN, FCOS])
def test_one_feature_view_equals_training_on_the_rotated_image(config):
    from rotplugin.models.feature_views import FeatureRotationViews

    _, model = small(config)
    inputs, samples = batch(model)
    views = FeatureRotationViews(model)
    for angle in (90, 180, 270):
        torch.manual_seed(1)                      # the RPN / RoI samplers draw from the global generator
        got = views.loss(model, inputs, samples, angles=[angle])
        torch.manual_seed(1)
        want = _image_view_loss(model, inputs, samples, angle)
        _assert_losses_close(got, want, LOSS_RTOL[config])
        _assert_grads_close(_backbone_grads(model, _total(got)), _backbone_grads(model, _total(want)),
                            GRAD_RTOL[config])
        # the control: the rotated ground truth on the unrotated pyramid is far from the reference, so the
        # equality above needs the pyramid rotated right
        from rotplugin.models.feature_views import _loss_on, rotate_sample

        torch.manual_seed(1)
        wrong = _flat(_loss_on(model, model.extract_feat(inputs), inputs,
                               [rotate_sample(s, angle, tuple(inputs.shape[-2:])) for s in samples]))
        want = _flat(want)
        assert any(not torch.allclose(wrong[k], want[k], rtol=1e-2) for k in want if "loss" in k), angle


@pytest.mark.parametrize("config", [RETINA, ORCNN])
def test_four_feature_views_are_the_mean_of_four_rotated_image_losses(config):
    from rotplugin.models.feature_views import FeatureRotationViews, mean_losses

    _, model = small(config)
    inputs, samples = batch(model)
    torch.manual_seed(2)
    got = FeatureRotationViews(model, views=4).loss(model, inputs, samples)
    torch.manual_seed(2)
    want = mean_losses([_image_view_loss(model, inputs, samples, a) for a in (0, 90, 180, 270)])
    _assert_losses_close(got, want, LOSS_RTOL[config])
    _assert_grads_close(_backbone_grads(model, _total(got)), _backbone_grads(model, _total(want)), GRAD_RTOL[config])


def test_views_are_drawn_without_replacement_from_their_own_generator():
    from rotplugin.models.feature_views import FeatureRotationViews

    _, model = small(RETINA)
    views = FeatureRotationViews(model, views=2, seed=3)
    state = torch.random.get_rng_state()
    draws = [views.draw() for _ in range(40)]
    assert torch.equal(state, torch.random.get_rng_state())             # the global generator is untouched
    assert all(len(d) == 2 and len(set(d)) == 2 and set(d) <= {0, 90, 180, 270} for d in draws)
    assert len({tuple(d) for d in draws}) == 6                          # every pair of the 4 angles comes up
    again = FeatureRotationViews(model, views=2, seed=3)
    assert [again.draw() for _ in range(40)] == draws                    # the seed reproduces them
    assert FeatureRotationViews(model).draw() == [0, 90, 180, 270]


def test_rotated_sample_boxes_metainfo_and_ignored_boxes():
    from mmengine.structures import InstanceData
    from mmrotate.structures.bbox import RotatedBoxes, rbox2qbox

    from rotplugin.models.feature_views import rotate_sample

    sample = make_batch(129)["data_samples"][0]
    sample.set_metainfo(dict(batch_input_shape=(129, 129), pad_shape=(129, 129)))
    sample.ignored_instances = InstanceData(bboxes=RotatedBoxes(torch.tensor([[10.0, 20.0, 8.0, 4.0, 0.1]])),
                                            labels=torch.tensor([2]))
    view = rotate_sample(sample, 90, (129, 129))
    assert view.metainfo["img_shape"] == view.metainfo["batch_input_shape"] == (129, 129)
    for key in ("gt_instances", "ignored_instances"):
        src, dst = sample.get(key), view.get(key)
        assert torch.equal(src.labels, dst.labels)
        # corners: torch.rot90(k=1) moves pixel (x, y) to (y, W - 1 - x); the same rectangle, le90 angle
        corners = rbox2qbox(src.bboxes.tensor).reshape(-1, 4, 2)
        moved = torch.stack([corners[..., 1], 128 - corners[..., 0]], -1)
        got = rbox2qbox(dst.bboxes.tensor).reshape(-1, 4, 2)
        for m, g in zip(moved, got):                                     # the same corner set, in some order
            d = torch.cdist(m, g)
            assert d.min(dim=1).values.max() < 1e-4
        assert (dst.bboxes.tensor[:, 4] >= -math.pi / 2).all() and (dst.bboxes.tensor[:, 4] < math.pi / 2).all()
    # a 45° view keeps the boxes whose centre stays on the canvas: a box in a corner leaves
    sample.gt_instances = InstanceData(bboxes=RotatedBoxes(torch.tensor([[64.0, 64.0, 10.0, 5.0, 0.0],
                                                                         [2.0, 2.0, 4.0, 4.0, 0.0]])),
                                       labels=torch.tensor([0, 1]))
    view = rotate_sample(sample, 45, (129, 129))
    assert view.gt_instances.labels.tolist() == [0]
    assert torch.allclose(view.gt_instances.bboxes.tensor[0, :2], torch.tensor([64.0, 64.0]))
    sample.gt_instances = InstanceData(bboxes=torch.zeros(1, 4), labels=torch.tensor([0]))
    with pytest.raises(ValueError, match="rbox"):
        rotate_sample(sample, 90, (129, 129))


def test_bad_options_are_refused_by_name():
    from mmrotate.registry import MODELS

    from rotplugin.models.feature_views import FeatureRotationViews
    from rotplugin.presets import load_config, shrink_detector_config

    cfg, model = small(RETINA)
    with pytest.raises(ValueError, match="fibre_interp"):
        FeatureRotationViews(model, angles=[0, 45])                       # C4: 45° is between orientation steps
    FeatureRotationViews(model, angles=[0, 45], fibre_interp="linear")    # approximate, allowed when asked for
    for bad in (0, 5, 2.0, True):
        with pytest.raises(ValueError, match="views must be an int from 1 to the number of angles"):
            FeatureRotationViews(model, views=bad)
    with pytest.raises(ValueError, match="repeat"):
        FeatureRotationViews(model, angles=[0, 360])
    with pytest.raises(ValueError, match="angles"):
        FeatureRotationViews(model, angles=[])
    inputs, samples = batch(model)
    with pytest.raises(ValueError, match="feature-rotation views"):        # 128 is not ≡ 1 (mod 128)
        FeatureRotationViews(model).loss(model, inputs[..., :128, :128], samples)
    plain = shrink_detector_config(load_config(str(ROOT / RETINA)))
    plain.model.neck = dict(type="mmdet.FPN", in_channels=list(plain.model.neck.in_channels), out_channels=32,
                            num_outs=5, start_level=plain.model.neck.get("start_level", 1),
                            add_extra_convs=plain.model.neck.get("add_extra_convs", "on_input"))
    with pytest.raises(ValueError, match="out_field_types"):
        FeatureRotationViews(MODELS.build(plain.model))


def test_hook_trains_with_views_and_writes_a_plain_checkpoint(tmp_path):
    from mmengine.config import Config
    from mmrotate.registry import MODELS

    from rotplugin.data.dota_synth import generate_dataset
    from rotplugin.presets import load_config, shrink_detector_config

    generate_dataset(str(tmp_path / "data"), num_images=2, size=129, seed=0, progress=False)
    cfg = shrink_detector_config(load_config(str(ROOT / RETINA)))
    cfg.train_dataloader = dota_train_dataloader(tmp_path / "data", batch_size=2)
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=2, val_interval=1000)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.test_cfg = cfg.test_dataloader = cfg.test_evaluator = None
    cfg.param_scheduler = []
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=2, by_epoch=False)
    cfg.custom_hooks = [dict(type="FeatureRotationViewsHook", angles=[0, 90, 180, 270], views=2)]
    config = tmp_path / "train.py"
    cfg.dump(str(config))
    runner = load_tool("train").main([str(config), "--work-dir", str(tmp_path / "work")])
    assert runner.iter == 2
    assert "loss" not in runner.model.__dict__                           # the detector's own loss again
    saved = torch.load(str(tmp_path / "work" / "iter_2.pth"), map_location="cpu", weights_only=True)["state_dict"]
    plain = MODELS.build(Config.fromfile(str(config)).model)
    plain.load_state_dict(saved, strict=True)                            # no wrapper prefixes
    log = "\n".join(p.read_text() for p in (tmp_path / "work").rglob("*.log"))
    assert "feature-rotation views in training: 2 of angles [0.0, 90.0, 180.0, 270.0]" in log

    cfg.custom_hooks = [dict(type="FeatureRotationViewsHook", views=9)]
    cfg.dump(str(config))
    with pytest.raises(ValueError, match="views must be an int"):
        load_tool("train").main([str(config), "--work-dir", str(tmp_path / "work2")])


def test_benchmark_settings_differ_only_in_rotation_augmentation(tmp_path):
    bench = load_tool("benchmark_feature_views")
    cfgs = {s: bench.setting_config(s, tmp_path / "data", tmp_path, seed=1, epochs=3) for s in bench.SETTINGS}
    for s, cfg in cfgs.items():
        types = [step["type"] for step in cfg.train_dataloader.dataset.pipeline]
        flips = [step for step in cfg.train_dataloader.dataset.pipeline if step["type"] == "mmdet.RandomFlip"]
        assert [f["direction"] for f in flips] == [["horizontal", "vertical"]]   # no diagonal (= 180°) flip
        assert ("RandomChoiceRotate" in types) == (s == "image")
        hooks = [h for h in cfg.custom_hooks if h["type"] == "FeatureRotationViewsHook"]
        assert [h["views"] for h in hooks] == ([int(s[1:])] if s.startswith("k") else [])
        assert cfg.train_cfg.max_epochs == 3 and cfg.randomness.seed == 1
        assert cfg.train_dataloader.dataset.data_root.startswith(str(tmp_path / "data"))
    # probes and --budget-min runs: iteration-based, no epoch schedule (the budget's is WallClockSchedule's)
    cfg = bench.setting_config("k4", tmp_path / "data", tmp_path, seed=0, iters=300)
    assert (cfg.train_cfg.type, cfg.train_cfg.max_iters, cfg.param_scheduler) == ("IterBasedTrainLoop", 300, [])
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="iters must be a positive integer"):
            bench.setting_config("k4", tmp_path / "data", tmp_path, seed=0, iters=bad)
    # the real-image training (--real): benchmark_real's model (a) and data, its any-angle RandomRotate and diagonal
    # flip replaced by the setting's rotations, no LR schedule of its own (a budget run's is WallClockSchedule's)
    for s in bench.SETTINGS:
        cfg = bench.real_setting_config(s, tmp_path / "real", tmp_path, seed=1, iters=50)
        types = [step["type"] for step in cfg.train_dataloader.dataset.pipeline]
        assert cfg.train_pipeline == cfg.train_dataloader.dataset.pipeline
        assert "RandomRotate" not in types and ("RandomChoiceRotate" in types) == (s == "image")
        assert [step["direction"] for step in cfg.train_dataloader.dataset.pipeline
                if step["type"] == "mmdet.RandomFlip"] == [["horizontal", "vertical"]]
        hooks = [h for h in cfg.custom_hooks if h["type"] == "FeatureRotationViewsHook"]
        assert [h["views"] for h in hooks] == ([int(s[1:])] if s.startswith("k") else [])
        assert (cfg.train_cfg.max_iters, cfg.param_scheduler, cfg.randomness.seed) == (50, [], 1)
        assert cfg.train_dataloader.dataset.data_root.startswith(str(tmp_path / "real" / "train_patches"))
        assert (cfg.model.backbone.orientation, cfg.model.bbox_head.num_classes) == (4, 3)
    scheduled = bench.real_setting_config("k4", tmp_path / "real", tmp_path, seed=0, iters=600, scheduled=True)
    assert [(step["type"], step["end"]) for step in scheduled.param_scheduler] == [("LinearLR", 100),
                                                                                  ("CosineAnnealingLR", 600)]
    with pytest.raises(ValueError, match="unknown setting 'k3'"):
        bench.real_setting_config("k3", tmp_path / "real", tmp_path, seed=0, iters=50)
    with pytest.raises(ValueError, match="iters must be a positive integer"):
        bench.real_setting_config("k4", tmp_path / "real", tmp_path, seed=0, iters=0)
    entries = {f"{s}/seed{seed}": {"mAP_none": 0.5 + 0.01 * seed, "mAP_feature_tta": 0.6, "sec_per_iter": t,
                                   "epochs": 3, "train_s": 100.0}
               for s, t in (("image", 0.4), ("k4", 0.8)) for seed in (0, 1)}
    summary = bench.summarise(entries, ["image", "k4"], [0, 1])
    assert summary["k4"]["cost_per_view_over_image"] == pytest.approx(0.8 / 4 / 0.4)
    assert summary["image"]["mAP_none"] == pytest.approx(0.505)
    assert summary["image"]["mAP_none_spread"] == pytest.approx(0.01)


def test_wall_clock_schedule_lays_the_demo_schedule_over_the_budget(monkeypatch):
    """--budget-min: the rate is base x linear warm-up (0.1 -> 1 over 100 iterations) x cosine (1 -> 0.05 over the
    budget's time); training stops at the first iteration end past the budget."""
    from types import SimpleNamespace

    bench = load_tool("benchmark_feature_views")
    now = [1000.0]
    monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])
    hook = bench.WallClockSchedule(60.0)
    runner = SimpleNamespace(optim_wrapper=SimpleNamespace(param_groups=[{"lr": 2e-3}, {"lr": 1e-3}]), iter=0,
                             train_loop=SimpleNamespace(stop_training=False))
    hook.before_train(runner)
    for it, elapsed, factor in ((0, 0.0, 0.1), (50, 1.0, 0.55 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi / 60)))),
                                (100, 30.0, 0.525), (400, 59.0, 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 59 / 60)))):
        runner.iter, now[0] = it, 1000.0 + elapsed
        hook.before_train_iter(runner, it)
        assert [g["lr"] for g in runner.optim_wrapper.param_groups] == pytest.approx([2e-3 * factor, 1e-3 * factor])
        hook.after_train_iter(runner, it)
        assert not runner.train_loop.stop_training
    now[0] = 1060.5
    hook.after_train_iter(runner, 401)
    assert runner.train_loop.stop_training
    hook.before_train_iter(runner, 402)                  # past the budget: the floor of the cosine
    assert runner.optim_wrapper.param_groups[0]["lr"] == pytest.approx(2e-3 * 0.05)
    with pytest.raises(ValueError, match="seconds must be positive"):
        bench.WallClockSchedule(0)


def test_real_image_runs_train_score_and_resume(tmp_path, monkeypatch, capsys):
    """--real: a budget run trains model (a) on benchmark_real's patches of the real images with K feature views,
    scores it on the held-out regions (no TTA, feature TTA) and is kept on a rerun; bad options are named."""
    from conftest import require_file

    real = require_file(ROOT.parent / "shared" / "data" / "dota_real")
    bench = load_tool("benchmark_feature_views")
    argv = ["--real", str(real), "--budget-min", "0.01", "--settings", "k2", "--seeds", "3", "--out", str(tmp_path)]
    data = bench.main(argv)
    entry = data["k2/seed3"]
    assert entry["iterations"] >= 1 and entry["test_images"] is None
    assert 0 <= entry["mAP_none"] <= 1 and 0 <= entry["mAP_feature_tta"] <= 1
    assert (tmp_path / "data" / "heldout" / "labelTxt" / "P0005.txt").is_file()
    assert (tmp_path / "k2_seed3" / "model.pth").is_file()

    def train_again(*args, **kwargs):
        raise AssertionError("a rerun trained again")

    train_and_test = bench.train_and_test
    monkeypatch.setattr(bench, "train_and_test", train_again)
    assert bench.main(argv)["k2/seed3"] == entry
    for bad, message in ((["--epochs", "3"], "drop --epochs"), ([], "--real needs --budget-min"),
                         (["--iters", "0"], "--iters must be at least 1")):
        with pytest.raises(SystemExit):
            bench.main(["--real", str(real), "--out", str(tmp_path), *bad])
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--iters", "5", "--out", str(tmp_path / "synthetic")])
    assert "--iters is for --real" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--real", str(tmp_path / "nowhere"), "--budget-min", "1", "--out", str(tmp_path / "o")])
    assert "nowhere does not exist" in capsys.readouterr().err
    with pytest.raises(ValueError, match="budget_s .* or iters"):
        train_and_test("k2", 0, None, tmp_path / "data", tmp_path, None, real=True)
