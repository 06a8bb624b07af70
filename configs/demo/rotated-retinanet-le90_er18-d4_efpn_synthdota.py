# The demo detector with rotations AND mirrors: EquivariantResNet-18 (D4) + EquivariantFPN, otherwise the C4 demo
# config (same widths in channels: 32 = 4 regular D4 fields of 8; data, schedule, head). Its mirrors are exact on the
# canvas too: feature TTA over all 8 elements of D4 runs the backbone once (tta_model flips none + horizontal).
_base_ = ['./rotated-retinanet-le90_er18-c4_efpn_synthdota.py']

model = dict(backbone=dict(flip=True), neck=dict(flip=True))
tta_model = dict(flips=['none', 'horizontal'])
