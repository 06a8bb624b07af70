# ReDet (le90, DOTA-v1.0 1024 patches, 1x schedule) of mmrotate on escnn: EquivariantResNet-50 (C8) for e2cnn's
# ReResNet, EquivariantFPN with nearest upsampling for ReFPN (same layers: 1x1 laterals and 3x3 outputs with bias, no
# activation, P6 by max pooling), the equivariant canvas preprocessor (1025 for the P6 stride 64) and rotplugin's
# pure-PyTorch RiRoIAlignRotated (CPU and CUDA) in the second stage. Everything else (RoI Transformer-style cascade,
# assigners, schedule) is mmrotate's ReDet config.
#
# ReDet checkpoints load as they are: the backbone's Pretrained init_cfg converts an e2cnn ReResNet checkpoint on the
# fly, and tools/convert_redet_checkpoint.py converts a whole ReDet detector checkpoint (backbone, ReFPN, heads) for
# `load_from`.
_base_ = ['mmrotate::redet/redet-le90_re50_refpn_1x_dota.py']

# The preprocessor / backbone / neck block below repeats in each shipped config: every config inherits its detector
# from mmrotate's, and mmengine cannot merge one `model` from two bases (duplicate keys among bases are an error).
custom_imports = dict(imports=['rotplugin.mm'], allow_failed_imports=False)
orientation = 8  # C8, as ReDet: every 256 channels are 32 regular fields of 8 orientation channels
# ReDet's ImageNet ReResNet-50 (the e2cnn file of ReDet / mmrotate, converted when loaded).
pretrained = 'work_dirs/pretrain/re_resnet50_c8_batch256-25b16846.pth'

model = dict(
    data_preprocessor=dict(type='EquivariantDetDataPreprocessor', pad_size_divisor=1, max_stride=64),
    backbone=dict(
        _delete_=True,
        type='EquivariantResNet',
        depth=50,
        orientation=orientation,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_eval=False,  # as ReDet's ReResNet
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(
        _delete_=True,
        type='EquivariantFPN',
        in_channels=[256, 512, 1024, 2048],
        out_channels=256,
        orientation=orientation,
        upsample_mode='nearest',  # ReFPN
        num_outs=5),
    roi_head=dict(
        bbox_roi_extractor=[
            dict(
                type='mmdet.SingleRoIExtractor',
                roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
                out_channels=256,
                featmap_strides=[4, 8, 16, 32]),
            dict(
                type='RiRoIExtractor',
                roi_layer=dict(
                    type='RiRoIAlignRotated',
                    out_size=7,
                    num_samples=2,
                    num_orientations=orientation,
                    clockwise=True),
                out_channels=256,
                featmap_strides=[4, 8, 16, 32]),
        ]))

# Rotation TTA the mmdet 3.x way: `tools/test.py CONFIG CKPT --tta` (mmdet's tools/test.py --tta too) tests
# dict(**tta_model, module=model): backbone + neck once, the heads on the rotated feature pyramids, the views merged by
# class-wise rotated NMS with the thresholds of the detector's own test_cfg. The views are made on the canvas, not by
# the data pipeline, so the TTA pipeline is the plain test pipeline.
tta_model = dict(type='FeatureRotationTTAModel', angles=[0, 90, 180, 270], iou_thr=0.1, score_thr=0.05,
                 max_per_img=2000)
tta_pipeline = {{_base_.val_pipeline}}
