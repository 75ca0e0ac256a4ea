#!/usr/bin/env python3
"""Runs the codec's criterion benchmarks so that two codecs can be compared
on a shared, loaded machine: one benchmark per process (3 s of
measurement after 1 s of warm-up), the contenders of each comparison
alternated run after run (and their order reversed every round), so a
change in the machine's load falls on both. One criterion run after
another, as `cargo bench` does them, put minutes between the two sides
of a ratio, and on this project's machine i8583's own unpack moved by 3x
between runs.

    cargo bench -p iso8583 --bench codec --no-run   # prints the binary
    python3 crates/iso8583/benches/alternate.py ROUNDS this=BINARY [before=BINARY]

`this` is the benchmark binary of the codec to measure, which also times
`i8583`; `before`, optional, one built from another commit (check out its
`crates/iso8583/src`, build, copy the binary) with the same bench file.
Prints every round's criterion medians and, per comparison, the median
and range of the per-round ratios of the first contender to each other.
"""

import os
import re
import statistics
import subprocess
import sys

UNIT = {"ps": 1e-3, "ns": 1.0, "µs": 1e3, "us": 1e3, "ms": 1e6}


def cases(has_before):
    def with_before(name, this, theirs=None):
        contenders = [("this", this)]
        if theirs:
            contenders.append(("this", theirs))
        if has_before:
            contenders.append(("before", this))
        return (name, contenders) if len(contenders) > 1 else None

    rows = [
        with_before("unpack ascii", "unpack_0200/iso8583/ascii_1987", "unpack_0200/i8583/ascii_1987"),
        with_before(
            "unpack + read every field",
            "unpack_0200/iso8583/ascii_1987/read_every_field",
            "unpack_0200/i8583/ascii_1987/read_every_field",
        ),
        with_before("unpack cup", "unpack_0200/iso8583/cup_pos"),
        with_before("pack ascii", "pack_0200/iso8583/ascii_1987", "pack_0200/i8583/ascii_1987"),
        with_before(
            "build + pack ascii",
            "pack_0200/iso8583/ascii_1987/build_and_pack",
            "pack_0200/i8583/ascii_1987/build_and_pack",
        ),
        with_before("pack cup", "pack_0200/iso8583/cup_pos"),
        with_before("build + pack cup", "pack_0200/iso8583/cup_pos/build_and_pack"),
        with_before("empty message", "unpack_0200/iso8583/empty_message"),
    ]
    return [row for row in rows if row]


def run(binary, bench):
    out = subprocess.run(
        ["nice", "-n", "15", binary, "--bench", "--noplot", "--discard-baseline",
         "--warm-up-time", "1", "--measurement-time", "3", "^" + re.escape(bench) + "$"],
        capture_output=True, text=True,
    ).stdout
    m = re.search(r"time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", out)
    if not m:
        sys.exit(f"no time for {bench}: {out[-500:]}")
    return float(m.group(1)) * UNIT[m.group(2)]


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    rounds = int(sys.argv[1])
    binaries = dict(arg.split("=", 1) for arg in sys.argv[2:])
    table = cases("before" in binaries)
    results = {name: [] for name, _ in table}
    for r in range(rounds):
        load = os.getloadavg()[0]
        for name, contenders in table:
            order = list(range(len(contenders)))
            if r % 2:
                order.reverse()
            times = [0.0] * len(contenders)
            for i in order:
                side, bench = contenders[i]
                times[i] = run(binaries[side], bench)
            results[name].append(times)
            shown = ", ".join(f"{s}:{b.split('/', 1)[1]}={t:.0f}" for (s, b), t in zip(contenders, times))
            print(f"round {r + 1} load {load:.1f} {name}: {shown}", flush=True)
    print("\nsummary: median ns [range]; ratios of the first to each other, median [range]")
    for name, contenders in table:
        rows = results[name]
        parts = []
        for i, (side, bench) in enumerate(contenders):
            column = [row[i] for row in rows]
            parts.append(f"{side} {bench.split('/', 1)[1]} {statistics.median(column):.0f} "
                         f"[{min(column):.0f}-{max(column):.0f}]")
        print(f"{name}: " + ", ".join(parts))
        for i in range(1, len(contenders)):
            ratios = [row[0] / row[i] for row in rows]
            print(f"   / {contenders[i][0]} {contenders[i][1].split('/', 1)[1]}: "
                  f"{statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]")


if __name__ == "__main__":
    main()
