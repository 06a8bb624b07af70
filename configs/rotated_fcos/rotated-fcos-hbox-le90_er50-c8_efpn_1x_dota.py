# Rotated FCOS (le90, DOTA-v1.0 1024 patches, 1x schedule; mmrotate's hbox variant: IoU loss on the horizontal box
# plus an L1 angle loss) with the equivariant backbone and FPN: only the data preprocessor (equivariant canvas 1025
# for the P7 stride 128), backbone and neck are replaced.
#
# Why this variant: mmrotate's default Rotated FCOS uses RotatedIoULoss, i.e. mmcv's diff_iou_rotated, which has no
# CPU implementation (it trains on GPUs only); mmdet's IoULoss and L1Loss are plain PyTorch.
#
# Its losses are normalised by the number of positive points (and the sum of centre-ness targets) averaged over all
# processes (reduce_mean in RotatedFCOSHead.loss_by_feat), so P processes with batch B compute the gradients of one
# process with batch P*B (the backbone's BN layers are frozen, norm_eval; the head uses GroupNorm; the neck has no
# norm). tests/test_distributed_cpu.py checks this on 2 processes. Rotated RetinaNet normalises by the positives of
# each process's own batch instead, so its multi-process runs are not equal to one process with the whole batch.
#
# Note for rotation TTA: mmdet's point generator puts the points of stride s at s*(i + 1/2) (offset 0.5), while
# rotplugin.canvas has feature i at s*i: a constant half-stride offset that training absorbs, the same in every view
# (a rotated view is the same detector on the rotated image), so feature-rotation TTA equals image-rotation TTA for
# this config too (tests/test_tta.py: all merged detections pair up within 1e-3 px / 1e-4 on the canvas).
_base_ = ['mmrotate::rotated_fcos/rotated-fcos-hbox-le90_r50_fpn_1x_dota.py']

# The preprocessor / backbone / neck block below repeats in each shipped config: every config inherits its detector
# from mmrotate's, and mmengine cannot merge one `model` from two bases (duplicate keys among bases are an error).
custom_imports = dict(imports=['rotplugin.mm'], allow_failed_imports=False)
orientation = 8  # C8: every 256 channels are 32 regular fields of 8 orientation channels

model = dict(
    data_preprocessor=dict(type='EquivariantDetDataPreprocessor', pad_size_divisor=1, max_stride=128),
    backbone=dict(
        _delete_=True,
        type='EquivariantResNet',
        depth=50,
        orientation=orientation,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_eval=True,
        init_cfg=None),
    neck=dict(
        _delete_=True,
        type='EquivariantFPN',
        in_channels=[256, 512, 1024, 2048],
        out_channels=256,
        orientation=orientation,
        start_level=1,
        add_extra_convs='on_output',
        relu_before_extra_convs=True,
        num_outs=5))

# Rotation TTA the mmdet 3.x way: `tools/test.py CONFIG CKPT --tta` (mmdet's tools/test.py --tta too) tests
# dict(**tta_model, module=model): backbone + neck once, the heads on the rotated feature pyramids, the views merged by
# class-wise rotated NMS with the thresholds of the detector's own test_cfg. The views are made on the canvas, not by
# the data pipeline, so the TTA pipeline is the plain test pipeline.
tta_model = dict(type='FeatureRotationTTAModel', angles=[0, 90, 180, 270], iou_thr=0.1, score_thr=0.05,
                 max_per_img=2000)
tta_pipeline = {{_base_.val_pipeline}}
