# The demo detector on C8: EquivariantResNet-18 (C8) + EquivariantFPN, otherwise the C4 demo config (same widths in
# channels: 32 = 4 regular C8 fields; data, schedule, head). 45° views are orientation steps of C8: feature TTA over
# 8 x 45° is exact in the fibre, approximate in space (the canvas grid is not mapped onto itself at 45°).
_base_ = ['./rotated-retinanet-le90_er18-c4_efpn_synthdota.py']

orientation = 8
model = dict(backbone=dict(orientation=orientation), neck=dict(orientation=orientation))
