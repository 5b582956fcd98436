"""Print each benchmark's median and its ratio to its group's reference, from a pytest-benchmark JSON.

Usage: ``python benchmarks/ratios.py results.json`` (made with ``--benchmark-json results.json``).
The reference of a group is ``interpolate`` for the transform groups and ``baseline`` for the
pipeline groups; an unchanged-size group is also compared with the same dtype's 384 resize.
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict


def _implementation(name: str) -> str:
    match = re.search(r"\[(\w+)-", name)
    base = name.split("[")[0]
    if base == "test_uint8_native_interpolate":
        return "interpolate-native-uint8"
    return match.group(1) if match else base


def main(path: str) -> None:
    data = json.load(open(path))
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    for bench in data["benchmarks"]:
        groups[bench["group"]][_implementation(bench["name"])] = bench["stats"]["median"]
    print(f"machine: {data['machine_info'].get('cpu', {}).get('brand_raw', '?')}, "
          f"torch {__import__('torch').__version__}")  # fmt: skip
    print(f"{'group':<28} {'implementation':<26} {'median':>10} {'ratio':>7}")
    for group in sorted(groups):
        medians = groups[group]
        reference = medians.get("interpolate", medians.get("baseline"))
        for name, median in sorted(medians.items(), key=lambda item: item[1]):
            ratio = f"{median / reference:.3f}" if reference else "-"
            print(f"{group:<28} {name:<26} {median * 1e3:>8.2f}ms {ratio:>7}")
        unchanged = re.fullmatch(r"(\w+)-(\w+)-512", group)
        if unchanged and "fastresize" in medians:
            resize = groups.get(f"{unchanged.group(1)}-{unchanged.group(2)}-384", {}).get("fastresize")
            if resize:
                share = medians["fastresize"] / resize
                print(f"{group:<28} {'unchanged / resize to 384':<26} {'':>10} {share:>7.4f}")


if __name__ == "__main__":
    main(sys.argv[1])
