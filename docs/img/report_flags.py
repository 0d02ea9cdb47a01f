"""Draw ``report_flags.png`` (README, "Governance") from a run directory: the report's
accuracy and loss curves with the monitor's markers (`fedsilo.server.report_flags`), and
the report's flags table below them.

    python docs/img/report_flags.py RUN_DIR docs/img/report_flags.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedsilo.server.report_flags import mark_flags  # noqa: E402


def main(run_dir: Path, out: Path) -> None:
    rows = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    rounds = [SimpleNamespace(**r) for r in rows]
    xs = [r.round for r in rounds]
    fig = plt.figure(figsize=(11, 5.0))
    grid = fig.add_gridspec(2, 2, height_ratios=[3, 0.9], hspace=0.45)
    acc, loss = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    acc.plot(xs, [r.test_accuracy for r in rounds], marker="o", ms=3, label="central test accuracy")
    acc.set(xlabel="round", ylabel="accuracy", ylim=(0, 1))
    loss.plot(xs, [r.test_loss for r in rounds], marker="o", ms=3, label="central test loss")
    loss.plot(xs, [r.train_loss for r in rounds], marker="s", ms=3, label="site train loss")
    loss.set(xlabel="round", ylabel="loss")
    for ax in (acc, loss):
        ax.grid(alpha=0.3)
        ax.legend(loc="center right")
    mark_flags((acc, loss), rounds)
    table = fig.add_subplot(grid[1, :])
    table.axis("off")
    flags = [f for r in rounds for f in r.flags]
    cells = [[str(f["round"]), f["severity"], f["code"], f["site"] or "-",
              ", ".join(f"{k}={v}" for k, v in sorted(f["evidence"].items())), f["action"]]
             for f in flags]
    t = table.table(cellText=cells, colLabels=["round", "severity", "code", "site", "evidence",
                                               "action"], loc="upper center", cellLoc="left")
    t.auto_set_font_size(False)
    t.set_fontsize(8)
    t.auto_set_column_width(list(range(6)))
    table.set_title("Flags (report.html)", fontsize=10, loc="left")
    fig.savefig(out, dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
