"""The synthetic benchmark: every gradient-free method on synthetic scenes with the
embedded ShapesNet, every metric, by `cam-infer synthetic` + `cam-infer audit`; prints a markdown table.

    python bench/audit.py --work /tmp/cam-audit --out bench/audit.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = [("adcc_of_means", "ADCC ↑"), ("average_drop", "Avg Drop ↓"), ("increase", "Increase ↑"),
           ("coherency", "Coherency ↑"), ("complexity", "Complexity ↓"), ("insertion", "Insertion ↑"),
           ("deletion", "Deletion ↓"), ("pointing", "Pointing (15 px) ↑"), ("energy", "Energy pointing ↑"),
           ("box_hit", "Box acc. (IoU ≥ 0.5) ↑")]


def cli(*args) -> None:
    subprocess.run([sys.executable, "-m", "cam_infer", *map(str, args)], check=True, cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/cam-audit")
    parser.add_argument("--out", help="also write the markdown table here")
    parser.add_argument("--splits", default="large,cluttered")
    parser.add_argument("-n", type=int, default=100, help="scenes per split")
    args = parser.parse_args()
    lines = []
    for split in args.splits.split(","):
        images = Path(args.work) / split
        cli("synthetic", "--out", images, "--split", split, "-n", args.n)
        report = Path(args.work) / f"report_{split}"
        cli("audit", ROOT / "cam_infer" / "data" / "shapes", images, "--boxes", images / "boxes.json",
            "--methods", "all", "--metrics", "all", "--tolerance", 15, "--out", report)
        summary = json.loads((report / "summary.json").read_text())
        lines += [f"\n**{split}** ({args.n} scenes)\n", "| method | " + " | ".join(c[1] for c in COLUMNS) + " |",
                  "|---|" + "---:|" * len(COLUMNS)]
        for method, means in summary["methods"].items():
            lines.append(f"| {method} | " + " | ".join(f"{means.get(c, float('nan')):.3f}" for c, _ in COLUMNS) + " |")
    text = "\n".join(lines).lstrip() + "\n"
    print(text)
    if args.out:
        from cam_infer.tools.bench import write_section
        write_section(args.out, None, text)              # the sections of road_cost.py and audit_sanity.py stay


if __name__ == "__main__":
    main()
