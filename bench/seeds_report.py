"""Mean and spread over seeds: collects runs named ``<group>-s<seed>`` into a record.

Copies each run's metrics, config, accuracy plot and last sample grid to ``--out/<run>/``, and
writes ``seeds.csv`` (per group: the seeds, each seed's final test accuracy, mean and sample
standard deviation) and ``seeds.png`` (test accuracy per epoch, the mean of each group with a
band of one standard deviation). The final accuracy is the last epoch's ``test_accuracy``,
measured with the run's own ``--eval-bn``.

    python -m bench.seeds_report runs/all-s0 runs/all-s1 runs/all-s2 --out bench/results/x
"""
from __future__ import annotations

import argparse
import csv
import re
import statistics
from pathlib import Path

from bench.accuracy_report import copy_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.seeds_report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders <group>-s<seed>")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    groups: dict[str, dict[int, list[float]]] = {}
    for run in args.runs:
        match = re.fullmatch(r"(.+)-s(\d+)", run.name)
        if not match:
            parser.error(f"run folder {run.name} is not named <group>-s<seed>")
        rows = copy_run(run, args.out / run.name)
        curve = [float(r["test_accuracy"]) for r in rows]
        groups.setdefault(match[1], {})[int(match[2])] = curve
    summary = []
    for group, seeds in groups.items():
        finals = [seeds[s][-1] for s in sorted(seeds)]
        summary.append({"group": group, "seeds": " ".join(map(str, sorted(seeds))),
                        "final_test_accuracy": " ".join(f"{a:.4f}" for a in finals),
                        "mean": statistics.mean(finals),
                        "std": statistics.stdev(finals) if len(finals) > 1 else float("nan")})
        print(summary[-1])
    with open(args.out / "seeds.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for group, seeds in groups.items():
        curves = np.array([seeds[s] for s in sorted(seeds)])
        measured = np.isfinite(curves).all(0)  # runs with --eval-every skip epochs
        epochs = np.arange(1, curves.shape[1] + 1)[measured]
        mean, std = curves[:, measured].mean(0), curves[:, measured].std(0)
        ax.plot(epochs, mean, label=f"{group} ({len(seeds)} seeds)")
        ax.fill_between(epochs, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "seeds.png")
    plt.close(fig)
    print(f"wrote {args.out / 'seeds.csv'} and {args.out / 'seeds.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
