#!/usr/bin/env python
"""How long the DOTA Task1 evaluation (``tools/eval_dota.py``) takes on a DOTA-val-sized set.

    python tools/benchmark_eval_dota.py [--images 458] [--objects 28853] [--detections 100000] [--seed 0]
                                        [--out work_dirs/benchmark_eval_dota]

Generates ground truth the size of DOTA-v1.0 val (458 images of 1024², 28,853 objects of 5 classes, 10 %
difficult, convex quadrilaterals with their corners moved off the rectangle) and detections: 60 % near an object
(jittered, duplicates included), 40 % anywhere. Writes them as ``labelTxt/`` and ``Task1_<class>.txt`` files and
times, in one run: reading the files (``read_task1_dir`` + ``load_ground_truth``) and the evaluation
(``evaluate_task1``), each the median of ``--repeats`` runs. Prints and writes ``benchmark_eval_dota.json``.
"""
import argparse
import json
import os
import statistics
import sys
import time


def quads(rng, centres, w, h, t, jitter):
    import numpy as np

    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) / 2
    shape = corners[None] * np.stack([w, h], -1)[:, None]
    shape = shape + rng.uniform(-jitter, jitter, shape.shape) * np.minimum(w, h)[:, None, None]
    rot = np.stack([np.stack([np.cos(t), -np.sin(t)], -1), np.stack([np.sin(t), np.cos(t)], -1)], -2)
    return (centres[:, None] + np.einsum("nij,nkj->nki", rot, shape)).reshape(-1, 8)


def generate(out, images, objects, detections, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    classes = ["plane", "ship", "small-vehicle", "large-vehicle", "storage-tank"]
    c = rng.uniform(0, 1024, (objects, 2))
    w = rng.uniform(8, 80, objects)
    h = w * rng.uniform(0.3, 1.0, objects)
    t = rng.uniform(-np.pi, np.pi, objects)
    polys = quads(rng, c, w, h, t, 0.1)
    img = rng.integers(0, images, objects)
    lab = rng.integers(0, len(classes), objects)
    diff = (rng.random(objects) < 0.1).astype(int)
    os.makedirs(os.path.join(out, "labelTxt"), exist_ok=True)
    os.makedirs(os.path.join(out, "results"), exist_ok=True)
    lines = [[] for _ in range(images)]
    for k in range(objects):
        lines[img[k]].append(" ".join(f"{v:.1f}" for v in polys[k]) + f" {classes[lab[k]]} {diff[k]}")
    for i in range(images):
        with open(os.path.join(out, "labelTxt", f"P{i:04d}.txt"), "w") as f:
            f.write("imagesource:synthetic\ngsd:0.1\n" + "\n".join(lines[i]) + "\n")
    near = rng.integers(0, objects, int(detections * 0.6))
    far = detections - len(near)
    dpolys = np.concatenate([
        quads(rng, c[near] + rng.normal(0, 3, (len(near), 2)), w[near] * rng.uniform(0.8, 1.2, len(near)), h[near],
              t[near] + rng.normal(0, 0.1, len(near)), 0.1),
        quads(rng, rng.uniform(0, 1024, (far, 2)), rng.uniform(8, 80, far), rng.uniform(5, 50, far),
              rng.uniform(-np.pi, np.pi, far), 0.0)])
    dimg = np.concatenate([img[near], rng.integers(0, images, far)])
    dlab = np.concatenate([lab[near], rng.integers(0, len(classes), far)])
    scores = rng.random(detections)
    for ci, cls in enumerate(classes):
        with open(os.path.join(out, "results", f"Task1_{cls}.txt"), "w") as f:
            for k in np.nonzero(dlab == ci)[0]:
                f.write(f"P{dimg[k]:04d} {scores[k]:.4f} " + " ".join(f"{v:.1f}" for v in dpolys[k]) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=458)
    p.add_argument("--objects", type=int, default=28853)
    p.add_argument("--detections", type=int, default=100000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="work_dirs/benchmark_eval_dota")
    a = p.parse_args(argv)
    from rotplugin.data.dota_eval import evaluate_task1, load_ground_truth, read_task1_dir
    from rotplugin.io import write_json_atomic

    generate(a.out, a.images, a.objects, a.detections, a.seed)
    read_s, eval_s = [], []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        gts = load_ground_truth(os.path.join(a.out, "labelTxt"))
        dets = read_task1_dir(os.path.join(a.out, "results"))
        t1 = time.perf_counter()
        res = evaluate_task1(dets, gts)
        t2 = time.perf_counter()
        read_s.append(t1 - t0)
        eval_s.append(t2 - t1)
    out = dict(images=a.images, objects=a.objects, detections=a.detections, seed=a.seed, repeats=a.repeats,
               read_seconds=statistics.median(read_s), evaluate_seconds=statistics.median(eval_s),
               mAP=res["mAP"], measured_at=time.strftime("%Y-%m-%d %H:%M:%S"))
    write_json_atomic(os.path.join(a.out, "benchmark_eval_dota.json"), out)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
