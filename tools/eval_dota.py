#!/usr/bin/env python
"""The official DOTA Task1 evaluation (the DOTA devkit's rules) of detections against full-image labels.

    python tools/eval_dota.py RESULTS LABELS [--image-set FILE] [--metric voc07|area] [--iou-thr 0.5]
                              [--json OUT] [--classes dota1.0] [--merge-iou 0.1]

RESULTS: a folder of ``Task1_<class>.txt`` (``tools/test.py --submission-dir``; lines ``image score x1 y1 ... y4``)
or the pickle of ``tools/test.py --out`` (patches ``<id>__<size>__<x>___<y>`` are moved to their image and merged by
class-wise rotated NMS at ``--merge-iou``, as the submission does, scores unrounded). LABELS: a ``labelTxt/`` folder
of full images (``<image id>.txt``). ``--image-set``: a file of image ids, one per line, limits the images.

Prints the AP, objects (non-difficult) and detections of every class with ground truth or detections, and the mAP
over the classes with ground truth (plus the devkit's mean over the whole class list); ``--json OUT`` writes
``{"mAP", "metric", "iou_thr", "classes": {class: {"ap", "num_gts", "num_dets"}}, "devkit_mAP", "warnings"}``.
The rules (IoU of the quadrilaterals, difficult objects, ties, duplicates) and where they differ from mmrotate's
``DOTAMetric``: ``rotplugin/data/dota_eval.py``. Exit status 2 on bad input, with the file and line named.
"""
import argparse
import json
import os
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="folder of Task1_<class>.txt files, or a .pkl of tools/test.py --out")
    p.add_argument("labels", help="labelTxt/ folder of the full images")
    p.add_argument("--image-set", help="file of image ids (one per line) to evaluate on")
    p.add_argument("--metric", choices=["voc07", "area"], default="voc07",
                   help="voc07: 11-point AP (the DOTA server's, default); area: area under the PR envelope")
    p.add_argument("--iou-thr", type=float, default=0.5, help="a detection matches above this IoU (default 0.5)")
    p.add_argument("--json", help="write the results as JSON to this file")
    p.add_argument("--classes", nargs="+", default=["dota1.0"],
                   help="the classes scored: a preset (dota1.0, dota1.5, dota2.0), names, or 'any' (default dota1.0; "
                        "objects of other classes are ignored and counted, as the devkit ignores them); for a "
                        "pickle, the names of its label indices")
    p.add_argument("--merge-iou", type=float, default=0.1,
                   help="IoU of the rotated NMS that merges patch results of a pickle (default 0.1)")
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    from rotplugin.data.dota_eval import (CountedWarnings, DOTAFormatError, evaluate_task1, format_results_table,
                                          load_ground_truth, read_image_set, read_task1_dir)
    from rotplugin.data.dota_split import resolve_classes
    from rotplugin.io import write_json_atomic

    t0 = time.perf_counter()
    try:
        classes = resolve_classes(a.classes)
        image_set = read_image_set(a.image_set) if a.image_set else None
        notes = CountedWarnings()
        gts = load_ground_truth(a.labels, notes=notes)  # all: detections on the others are counted
        if os.path.isdir(a.results):
            dets = read_task1_dir(a.results, classes=classes)
        elif a.results.endswith((".pkl", ".pickle")) and os.path.isfile(a.results):
            if classes is None:
                raise ValueError("a results pickle holds class indices: --classes must name the classes")
            import pickle

            from rotplugin.evaluation import results_to_task1
            with open(a.results, "rb") as f:
                results = pickle.load(f)
            if not isinstance(results, list):
                raise ValueError(f"{a.results}: expected the list of per-image results of tools/test.py --out, "
                                 f"got {type(results).__name__}")
            dets = results_to_task1(results, classes, merge_iou=a.merge_iou, source=a.results)
        else:
            raise FileNotFoundError(f"results {a.results!r}: neither a folder of Task1_<class>.txt nor a .pkl file")
        result = evaluate_task1(dets, gts, iou_thr=a.iou_thr, metric=a.metric, classes=classes, notes=notes,
                                image_set=image_set)
    except (DOTAFormatError, FileNotFoundError, ValueError) as e:
        print(f"eval_dota: error: {e}", file=sys.stderr)
        return 2
    result["seconds"] = round(time.perf_counter() - t0, 3)
    print(format_results_table(result))
    for w in result["warnings"]:
        print(f"eval_dota: warning: {w}", file=sys.stderr)
    if a.json:
        write_json_atomic(a.json, result)
        print(f"-> {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
