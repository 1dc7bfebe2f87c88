"""Collects finished training runs into a committed accuracy record.

For each run folder it copies ``metrics.csv``, ``config.json``, ``accuracy.png`` and the last
sample grid, evaluates the final checkpoint with both BatchNorm evaluation modes, and writes a
``summary.csv`` plus one ``comparison.png`` of test accuracy per epoch for all runs.

    python -m bench.accuracy_report runs/a runs/b --out bench/results/accuracy
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

from ssgan.models import EVAL_BN_MODES
from ssgan.evaluation import evaluate_checkpoint


def copy_run(run: Path, dest: Path) -> list[dict]:
    """Copies a run's record (metrics, config, accuracy plot, last sample grid) to ``dest``;
    returns its metrics rows."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.csv", "config.json", "accuracy.png"):
        shutil.copy2(run / name, dest / name)
    samples = sorted((run / "samples").glob("epoch_*.png"))
    if samples:
        shutil.copy2(samples[-1], dest / samples[-1].name)
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.accuracy_report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders")
    parser.add_argument("--out", type=Path, default=Path("bench/results/accuracy"))
    args = parser.parse_args(argv)
    summary, curves = [], {}
    for run in args.runs:
        dest = args.out / run.name
        rows = copy_run(run, dest)
        cfg = json.loads((run / "config.json").read_text())
        curves[run.name] = [(int(r["epoch"]), float(r["test_accuracy"])) for r in rows]
        summary.append({
            "run": run.name, "epochs": rows[-1]["epoch"],
            "labeled_batch_size": cfg["labeled_batch_size"], "lr_decay": cfg["lr_decay"],
            "supervised_only": cfg["supervised_only"],
            **{f"test_accuracy_{bn}_bn": evaluate_checkpoint(
                run / "checkpoints" / "last.pt", device="cpu", eval_bn=bn)["test_accuracy"]
               for bn in EVAL_BN_MODES},
            "best_epoch_test_accuracy": max(float(r["test_accuracy"]) for r in rows),
            "train_minutes": sum(float(r["epoch_s"]) for r in rows) / 60,
            "mean_step_ms": sum(float(r["step_ms"]) for r in rows) / len(rows)})
        print(summary[-1])
    with open(args.out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, pts in curves.items():
        ax.plot(*zip(*pts), label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (10k MNIST test images)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "comparison.png")
    print(f"wrote {args.out / 'summary.csv'} and {args.out / 'comparison.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
