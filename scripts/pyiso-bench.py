#!/usr/bin/env python3
"""Times pyiso8583 (4.0.1, spec default_ascii) encoding and decoding the
0200 sale the Rust codec's benchmarks use (crates/iso8583/benches/common/
sale.rs), and prints one JSON line: ns per encode and per decode, the
best of several rounds (the least disturbed by other work on the machine).

    $PYISO8583_PYTHON scripts/pyiso-bench.py [--iterations N] [--rounds R]

It first checks that pyiso8583 produces the very bytes the Rust codec
packs (SALE_ASCII below, asserted on the Rust side too), so both time the
same message.
"""

import argparse
import json
import sys
import time

import iso8583
from iso8583.specs import default_ascii as SPEC

# Same fields, same order as SALE_FIELDS in benches/common/sale.rs.
SALE = {
    "t": "0200",
    "2": "4761739001010010",
    "3": "000000",
    "4": "000000001250",
    "11": "000123",
    "12": "143015",
    "13": "1202",
    "14": "2812",
    "22": "051",
    "23": "001",
    "25": "00",
    "35": "4761739001010010=28122011758928889",
    "41": "TERM0001",
    "42": "MERCHANT0000001",
    "49": "978",
    "60": "22000001000",
}



def rust_sale_ascii():
    """The wire form the Rust codec packs, read from the shared Rust file so
    the two can never silently drift apart."""
    import pathlib
    import re

    source = pathlib.Path(__file__).resolve().parent.parent / "crates/iso8583/benches/common/sale.rs"
    found = re.search(r'pub const SALE_ASCII: &\[u8\] = b"([^"]*)";', source.read_text())
    if not found:
        sys.exit(f"no SALE_ASCII in {source}")
    return found.group(1).encode()


def best_ns_per_op(op, iterations, rounds):
    best = None
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for _ in range(iterations):
            op()
        elapsed = (time.perf_counter_ns() - start) / iterations
        best = elapsed if best is None else min(best, elapsed)
    return best


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    if iso8583.__version__ != "4.0.1":
        sys.exit(f"expected pyiso8583 4.0.1, found {iso8583.__version__}")
    encoded, _ = iso8583.encode(dict(SALE), SPEC)
    expected = rust_sale_ascii()
    if bytes(encoded) != expected:
        sys.exit(f"pyiso8583 packs {bytes(encoded)!r}, the Rust codec {expected!r}")
    decoded, _ = iso8583.decode(bytes(encoded), SPEC)
    for field, value in SALE.items():
        if decoded[field] != value:
            sys.exit(f"field {field}: decoded {decoded[field]!r}, sent {value!r}")

    # encode() writes the bitmap ("p") into the dict it is given; a fresh
    # copy per call is what an application encoding a new message pays.
    encode_ns = best_ns_per_op(lambda: iso8583.encode(dict(SALE), SPEC), args.iterations, args.rounds)
    wire = bytes(encoded)
    decode_ns = best_ns_per_op(lambda: iso8583.decode(wire, SPEC), args.iterations, args.rounds)
    print(json.dumps({
        "codec": f"pyiso8583 {iso8583.__version__} (CPython {sys.version.split()[0]})",
        "message": "0200 sale, 15 fields, default_ascii",
        "iterations": args.iterations,
        "rounds": args.rounds,
        "encode_ns": round(encode_ns),
        "decode_ns": round(decode_ns),
    }))


if __name__ == "__main__":
    main()
