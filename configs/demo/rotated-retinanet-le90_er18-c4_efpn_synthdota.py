# The demo detector of `make demo`: a small Rotated RetinaNet (le90) with EquivariantResNet-18 (C4) +
# EquivariantFPN, trained from scratch on CPU on the synthetic DOTA set of tools/make_synthetic_dota.py
# (256² scenes with the five DOTA classes it draws). Only sizes, data and schedule differ from the DOTA config.
_base_ = ['../rotated_retinanet/rotated-retinanet-rbox-le90_er50-c8_efpn_1x_dota.py']

data_root = 'work_dirs/demo/data/'  # train/ and test/, each with images/ and labelTxt/
classes = ('plane', 'ship', 'small-vehicle', 'large-vehicle', 'storage-tank')
orientation = 4
width = 32  # base channels: 8 regular C4 fields in the first stage
neck_channels = 64

model = dict(
    # P3-P6 (strides 8-64): 256² images go on a 257² canvas
    data_preprocessor=dict(max_stride=64),
    backbone=dict(depth=18, orientation=orientation, stem_channels=width, base_channels=width,
                  frozen_stages=-1, norm_eval=False),
    neck=dict(in_channels=[width, width * 2, width * 4, width * 8], out_channels=neck_channels,
              orientation=orientation, num_outs=4),
    bbox_head=dict(
        num_classes=len(classes), in_channels=neck_channels, feat_channels=neck_channels, stacked_convs=2,
        # objects of 8-90 px: anchors from 16 px at stride 8
        anchor_generator=dict(octave_base_scale=2, strides=[8, 16, 32, 64])),
    # anchors matched to the objects by the IoU of their circumscribed horizontal boxes (mmrotate's "hbox" RetinaNet
    # assignment; its FakeRBboxOverlaps2D runs the rotated-IoU kernel, which costs more than this backbone on CPU)
    train_cfg=dict(assigner=dict(iou_calculator=dict(type='CircumscribedHBoxOverlaps2D'))),
    test_cfg=dict(nms_pre=1000, max_per_img=300))

metainfo = dict(classes=classes)
train_pipeline = [
    dict(type='mmdet.LoadImageFromFile'),
    dict(type='mmdet.LoadAnnotations', with_bbox=True, box_type='qbox'),
    dict(type='ConvertBoxType', box_type_mapping=dict(gt_bboxes='rbox')),
    dict(type='mmdet.RandomFlip', prob=0.75, direction=['horizontal', 'vertical', 'diagonal']),
    dict(type='mmdet.PackDetInputs')
]
test_pipeline = [
    dict(type='mmdet.LoadImageFromFile'),
    dict(type='mmdet.Resize', scale=(256, 256), keep_ratio=True),  # no-op on the 256² scenes; records scale_factor
    dict(type='mmdet.LoadAnnotations', with_bbox=True, box_type='qbox'),
    dict(type='ConvertBoxType', box_type_mapping=dict(gt_bboxes='rbox')),
    dict(type='mmdet.PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
tta_pipeline = test_pipeline  # rotation TTA (tta_model of the base config) tests on the plain test pipeline
tta_model = dict(max_per_img=300)
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='train/labelTxt/',
                 data_prefix=dict(img_path='train/images/'), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='test/labelTxt/',
                 data_prefix=dict(img_path='test/images/'), pipeline=test_pipeline))
test_dataloader = val_dataloader

max_epochs = 12
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, T_max=max_epochs, eta_min_ratio=0.05)
]
optim_wrapper = dict(_delete_=True, type='OptimWrapper',
                     optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05),
                     clip_grad=dict(max_norm=35, norm_type=2))
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=max_epochs, max_keep_ckpts=1),
                     visualization=dict(type='mmdet.DetVisualizationHook', draw=False))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
