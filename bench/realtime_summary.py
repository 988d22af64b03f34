"""One line per ``bench/bench_node.py realtime`` log: share of triggers with an output, trigger ->
publish p50 / p99, the stream start, the rest's p99, the LiDAR branch and head medians, node CPU, and
the load average before the run. Usage: ``python bench/realtime_summary.py LOG [LOG ...]``
(``bench/realtime_pairs.sh`` writes such logs, alternating two checkouts)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

PATTERNS = {
    "share": r"frames published \d+ \(([\d.]+) %\)",
    "p50": r"trigger arrival -> publish: p50 ([\d.]+) ms",
    "p99": r"trigger arrival -> publish: p50 [\d.]+ ms, p99 ([\d.]+) ms",
    "start": r"first \d+ \(stream start\): ([\d, ]+) ms",
    "rest_p99": r"the rest: p99 ([\d.]+)",
    "lidar": r"\n\s+lidar\s+p50\s+([\d.]+)",
    "infer": r"\n\s+infer\s+p50\s+([\d.]+)",
    "cpu": r"node ([\d.]+), player",
    "load": r"load average ([\d.]+) before",
}


def summarise(text: str) -> dict[str, str] | None:
    """The fields of one log, or None when the run produced no result (e.g. the node did not come up)."""
    found = {k: re.search(p, text) for k, p in PATTERNS.items()}
    if found["share"] is None:
        return None
    return {k: (m.group(1).strip() if m else "-") for k, m in found.items()}


def main(argv: list[str]) -> int:
    print("| run | load before | triggers with an output | p50 / p99 | stream start | rest p99 | LiDAR / infer p50 | node CPU |")
    print("| --- | ---: | ---: | --- | --- | ---: | --- | ---: |")
    for path in argv:
        s = summarise(Path(path).read_text(errors="replace"))
        name = Path(path).stem
        if s is None:
            print(f"| {name} | no result (see the log) | | | | | | |")
            continue
        print(f"| {name} | {s['load']} | {s['share']} % | {s['p50']} / {s['p99']} ms | {s['start']} ms | "
              f"{s['rest_p99']} ms | {s['lidar']} / {s['infer']} ms | {s['cpu']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
