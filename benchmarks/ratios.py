"""Print each benchmark's median, its ratio to its group's reference and its share of copy bandwidth.

Usage: ``python benchmarks/ratios.py results.json [more.json ...]`` (made with ``--benchmark-json``;
several files are read as one run, e.g. the transform and loader suites run one after the other).
The reference of a group is ``seed`` (the seed's inline code) for the transform groups,
``baseline`` for the pipeline and hand-over groups and ``handwritten`` for the training groups.
Where a benchmark recorded ``extra_info["bytes"]`` (bytes read plus written), its bandwidth is
printed in GB/s and as a share of the fastest device copy
(``test_copy``) measured on the same device in the same run. An unchanged-size group is also
compared with the same case's resize to 384.
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from typing import Any

REFERENCES = ("seed", "baseline", "handwritten")


def _implementation(name: str) -> str:
    base = name.split("[")[0]
    if base == "test_uint8_native_interpolate":
        return "interpolate-native-uint8"
    if base == "test_copy":
        return "copy-" + name.rstrip("]").split("-")[-1]
    match = re.search(r"\[(\w+)[-\]]", name)
    return match.group(1) if match else base


def main(*paths: str) -> None:
    if not paths:
        sys.exit("usage: python benchmarks/ratios.py results.json [more.json ...]")
    runs = []
    for path in paths:
        with open(path) as file:
            runs.append(json.load(file))
    data = {"machine_info": runs[0]["machine_info"], "benchmarks": [b for run in runs for b in run["benchmarks"]]}
    groups: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    copy_bandwidth: dict[str, float] = defaultdict(float)
    for bench in data["benchmarks"]:
        median, moved = bench["stats"]["median"], bench.get("extra_info", {}).get("bytes")
        groups[bench["group"]][_implementation(bench["name"])] = {"median": median, "bytes": moved}
        if bench["name"].startswith("test_copy") and moved:
            device = bench["group"].split("-")[0]
            copy_bandwidth[device] = max(copy_bandwidth[device], moved / median)
    print(f"machine: {data['machine_info'].get('cpu', {}).get('brand_raw', '?')}")
    for device, bandwidth in sorted(copy_bandwidth.items()):
        print(f"{device} copy bandwidth (read + write): {bandwidth / 1e9:.1f} GB/s")
    print(f"{'group':<28} {'implementation':<26} {'median':>10} {'ratio':>7} {'GB/s':>8} {'of copy':>8}")
    for group in sorted(groups):
        entries = groups[group]
        reference = next((entries[name]["median"] for name in REFERENCES if name in entries), None)
        copy = copy_bandwidth.get(group.split("-")[0])
        for name, entry in sorted(entries.items(), key=lambda item: item[1]["median"]):
            median, moved = entry["median"], entry["bytes"]
            ratio = f"{median / reference:.3f}" if reference else "-"
            rate = f"{moved / median / 1e9:.1f}" if moved else "-"
            share = f"{moved / median / copy:.1%}" if moved and copy else "-"
            print(f"{group:<28} {name:<26} {median * 1e3:>8.3f}ms {ratio:>7} {rate:>8} {share:>8}")
        unchanged = re.fullmatch(r"(\w+-\w+-\w+)-512", group)
        if unchanged:
            resized = groups.get(f"{unchanged.group(1)}-384", {})
            for name in ("triton", "torch"):
                if name in entries and name in resized:
                    share = entries[name]["median"] / resized[name]["median"]
                    print(f"{group:<28} {name + ' unchanged / 384':<26} {'':>10} {share:>7.4f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
