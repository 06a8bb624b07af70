"""Is the demo's training reproducible, and what changes its result? Trains the demo detector for a few iterations
in fresh processes under given settings and compares the weights bitwise.

    python tools/check_determinism.py [--iters 30] [--runs "threads=2" "threads=2" "threads=1" "threads=2,seed=1"]
                                      [--data work_dirs/demo/data] [--json OUT]

Each run is a separate ``python`` process (as a fresh ``make demo`` is) that trains
``configs/demo/rotated-retinanet-le90_er18-c4_efpn_synthdota.py`` for ``--iters`` iterations (its seed, data order and
schedule; ``seed=S`` changes the seed, ``threads=T`` sets ``torch.set_num_threads``) and prints the SHA-256 of its
state dict. The report: per run the digest, the loss after the last iteration, and the largest weight difference
from the first run. Equal digests mean bitwise-equal training; a difference after a few iterations grows over a
whole training (the weights' trajectory is chaotic), which is what moves the demo's mAP between machines.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/demo/rotated-retinanet-le90_er18-c4_efpn_synthdota.py"


def train_once(iters: int, threads: int, seed: int, data: str, out: str) -> None:
    """In this process: train ``iters`` iterations, save the state dict to ``out``, print the loss."""
    import torch
    from mmengine.runner import Runner

    from rotplugin.apis.demo import demo_config
    from rotplugin.models.tta import unwrap_model

    torch.set_num_threads(threads)
    cfg = demo_config(CONFIG, Path(out).parent, 256, data=data)
    cfg.randomness = dict(seed=seed)
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=iters, val_interval=10 ** 6)
    cfg.param_scheduler = []
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=-1, save_last=False)
    cfg.default_hooks.logger.interval = 10 ** 6
    runner = Runner.from_cfg(cfg)
    runner.train()
    torch.save(unwrap_model(runner.model).state_dict(), out)
    print(json.dumps({"loss": float(runner.message_hub.get_scalar("train/loss").current())}))


def digest(state) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        v = state[k]
        h.update(v.detach().cpu().contiguous().numpy().tobytes() if hasattr(v, "numpy") else repr(v).encode())
    return h.hexdigest()


def parse_run(text: str) -> dict:
    run = {"threads": 2, "seed": 0}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        if key not in run or not value.lstrip("-").isdigit():
            raise SystemExit(f"--runs: {text!r} not understood; give e.g. threads=2,seed=0")
        run[key] = int(value)
    if run["threads"] < 1:
        raise SystemExit(f"--runs: threads must be >= 1 in {text!r}")
    return run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--runs", nargs="+", default=["threads=2", "threads=2", "threads=1", "threads=2,seed=1"])
    p.add_argument("--data", default=str(ROOT / "work_dirs/demo/data"))
    p.add_argument("--out", default=str(ROOT / "work_dirs/determinism"))
    p.add_argument("--json")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        iters, threads, seed, out = args.child
        train_once(int(iters), int(threads), int(seed), args.data, out)
        return 0
    import torch

    if not (Path(args.data) / "train").is_dir():
        raise SystemExit(f"{args.data}/train not found: run `make demo` first (or give --data)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report, first = [], None
    for i, text in enumerate(args.runs):
        run = parse_run(text)
        path = out / f"run{i}.pth"
        res = subprocess.run([sys.executable, __file__, "--data", args.data, "--child", str(args.iters),
                              str(run["threads"]), str(run["seed"]), str(path)], capture_output=True, text=True)
        if res.returncode:
            raise SystemExit(f"run {text} failed:\n{res.stderr[-3000:]}")
        loss = json.loads(res.stdout.strip().splitlines()[-1])["loss"]
        state = torch.load(path, map_location="cpu", weights_only=True)
        first = state if first is None else first
        diff = max(float((state[k].double() - first[k].double()).abs().max()) for k in state
                   if state[k].is_floating_point())
        row = dict(run=text, iters=args.iters, loss=loss, sha256=digest(state)[:16], max_weight_diff=diff)
        report.append(row)
        print(f"{text:>20}: loss {loss:.6f}  sha256 {row['sha256']}  max |w - w(run 0)| {diff:.3e}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
