#!/usr/bin/env python
"""Split full DOTA images into patches for MMRotate (see rotplugin/data/dota_split.py for the exact rules).

Single scale (the usual DOTA v1.0 setting):
    python tools/dota_split.py --img-dir DOTA/train/images --ann-dir DOTA/train/labelTxt \\
        --out-dir data/split_ss_dota/train --size 1024 --gap 200 --workers 8
Multi-scale (MMRotate's ms_* configs): --rates 0.5 1.0 1.5 --gap 500
Test set (no labels): leave out --ann-dir; every patch is written, no labelTxt.

Patch names: {id}__{window side}__{x}___{y}, (x, y) = top-left in the original image; rates only change the
window side (int(size / rate)), patches are not resized. Output: OUT/images/*.png and OUT/labelTxt/*.txt.
"""
import argparse
import sys



def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--img-dir", required=True, help="directory of full-size images")
    p.add_argument("--ann-dir", default=None, help="directory of DOTA labelTxt files (<image id>.txt); optional")
    p.add_argument("--out-dir", required=True, help="output root: OUT/images, OUT/labelTxt")
    p.add_argument("--size", type=int, default=1024, help="patch (window) side at rate 1 (default 1024)")
    p.add_argument("--gap", type=int, default=200,
                   help="overlap of neighbouring windows at rate 1 (default 200; 500 is usual for multi-scale)")
    p.add_argument("--rates", type=float, nargs="+", default=[1.0],
                   help="scales; window side int(size/rate), gap int(gap/rate) (default 1.0; multi-scale: 0.5 1.0 1.5)")
    p.add_argument("--iof-thr", type=float, default=0.7,
                   help="keep an object in a patch when area inside / area >= this (default 0.7)")
    p.add_argument("--img-rate-thr", type=float, default=0.6,
                   help="drop windows whose share of image is <= this, unless none passes (default 0.6)")
    p.add_argument("--pad-value", type=int, nargs="+", default=[104, 116, 124],
                   help="padding colour, BGR (default 104 116 124, the ImageNet mean) or one value")
    p.add_argument("--save-empty", action="store_true",
                   help="also write patches without objects (always done when --ann-dir is not given)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip malformed label lines / unknown classes with a warning instead of stopping")
    p.add_argument("--classes", nargs="+", default=["dota1.0"],
                   help="allowed class names: a preset (dota1.0, dota1.5, dota2.0), a list, or 'any' (default dota1.0)")
    p.add_argument("--ext", default=".png", help="patch image format (default .png)")
    p.add_argument("--png-compression", type=int, default=1, help="PNG compression level 0-9 (default 1, fast)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--overwrite", action="store_true", help="allow a non-empty output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    # the splitter (numpy + OpenCV, ~0.7 s to import here) after the arguments: --help and usage errors are instant
    from rotplugin.data.dota_split import DOTAFormatError, split_dataset

    try:
        summary = split_dataset(
            a.img_dir, a.out_dir, ann_dir=a.ann_dir, size=a.size, gap=a.gap, rates=a.rates, iof_thr=a.iof_thr,
            img_rate_thr=a.img_rate_thr, pad_value=a.pad_value, save_empty=True if a.save_empty else None,
            workers=a.workers, skip_bad=a.skip_bad, classes=a.classes, ext=a.ext,
            png_compression=a.png_compression, overwrite=a.overwrite, progress=not a.no_progress)
    except (DOTAFormatError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"dota_split: error: {e}", file=sys.stderr)
        return 2
    print(f"split {summary['images']} images into {summary['patches']} patches with {summary['objects']} objects "
          f"({summary['skipped_empty']} empty windows skipped) in {summary['seconds']:.1f} s -> {a.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
