"""Where a traced workload's time went: totals from a tessera profile (POST /start_profile; a
gzipped or plain Chrome trace from torch.profiler).

Prints the traced window, the share of it the device was busy (the union of its kernel
intervals), the engine's step ranges (`engine_step`, `schedule`, `forward <mode>`, `sample`,
`process`; forward ranges grouped by mode) with count, total and mean, and the top kernels by
total device time.
Usage: python scripts/gpu/trace_summary.py TRACE [--top 25]
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json


def load(path: str) -> list[dict]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        return json.load(f)["traceEvents"]


def busy_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


def summarize(events: list[dict], top: int) -> str:
    spans = [e for e in events if e.get("ph") == "X" and "dur" in e]
    kernels = [e for e in spans if e.get("cat") == "kernel"]
    ranges = [e for e in spans if e.get("cat") == "user_annotation"]
    lines = []
    if spans:
        t0 = min(e["ts"] for e in spans)
        t1 = max(e["ts"] + e["dur"] for e in spans)
        window = t1 - t0
        busy = busy_us([(k["ts"], k["ts"] + k["dur"]) for k in kernels])
        lines.append(f"window {window / 1e3:.1f} ms; device busy {busy / 1e3:.1f} ms "
                     f"({busy / max(window, 1e-9):.1%}), {len(kernels)} kernels")
    by_range: dict[str, list[float]] = collections.defaultdict(list)
    for r in ranges:
        name = r["name"].split(" reqs=")[0]
        by_range[name].append(r["dur"])
    lines.append("host ranges: count, total ms, mean ms")
    for name, durs in sorted(by_range.items(), key=lambda kv: -sum(kv[1])):
        lines.append(f"  {name:<24} {len(durs):>6} {sum(durs) / 1e3:>10.1f} "
                     f"{sum(durs) / len(durs) / 1e3:>9.3f}")
    by_kernel: dict[str, list[float]] = collections.defaultdict(list)
    for k in kernels:
        by_kernel[k["name"]].append(k["dur"])
    total = sum(sum(d) for d in by_kernel.values()) or 1.0
    lines.append(f"top {top} kernels: total ms, share of kernel time, count, mean us")
    for name, durs in sorted(by_kernel.items(), key=lambda kv: -sum(kv[1]))[:top]:
        lines.append(f"  {sum(durs) / 1e3:>9.1f} {sum(durs) / total:>6.1%} {len(durs):>6} "
                     f"{sum(durs) / len(durs):>9.1f}  {name[:110]}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trace")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    print(summarize(load(args.trace), args.top))


if __name__ == "__main__":
    main()
