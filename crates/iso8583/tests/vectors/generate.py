#!/usr/bin/env python3
"""Writes ascii_1987.json: ISO 8583 messages packed by pyiso8583 with its
`default_ascii` spec, for the Rust interoperability test (tests/interop.rs).

The vectors are committed, so `make test` needs no Python. To regenerate:

    python3 -m venv /tmp/pyiso && /tmp/pyiso/bin/pip install pyiso8583==4.0.1
    /tmp/pyiso/bin/python crates/iso8583/tests/vectors/generate.py

"valid" vectors are what pyiso8583 packed from the listed field values
(the Rust test unpacks each, compares every field, and packs it back byte
for byte). "invalid" vectors are bytes pyiso8583 refuses to decode, with
the field it names; the Rust codec must refuse them too, naming the same
field. Card numbers are test numbers, not real cards.
"""

import copy
import json
import os
import sys

import iso8583
from iso8583.specs import default_ascii as SPEC

EXPECTED_VERSION = "4.0.1"

PAN = "4761739001010010"
TRACK2 = PAN + "=22122011143804400000"


def sale():
    return {
        "t": "0200",
        "2": PAN,
        "3": "000000",
        "4": "000000012345",
        "7": "1202103015",
        "11": "000101",
        "12": "103015",
        "13": "1202",
        "14": "2212",
        "18": "5411",
        "22": "051",
        "23": "001",
        "25": "00",
        "35": TRACK2,
        "41": "TERM0001",
        "42": "MERCHANT0000001",
        "43": "CORNER SHOP             SPRINGFIELD   US",
        "49": "840",
        "52": "0123456789ABCDEF",
        "55": "9F2608C1C2C3C4C5C6C7C89F2701809F10120110A00003220000000000000000000000FF",
    }


def valid_messages():
    yield "sale", sale()
    yield "sale_response", {
        "t": "0210",
        "3": "000000",
        "4": "000000012345",
        "7": "1202103016",
        "11": "000101",
        "12": "103015",
        "13": "1202",
        "37": "123456789012",
        "38": "A1B2C3",
        "39": "00",
        "41": "TERM0001",
        "42": "MERCHANT0000001",
        "49": "840",
    }
    yield "decline_with_spaces_in_an_fields", {
        "t": "0210",
        "11": "000102",
        "38": "      ",
        "39": "05",
        "41": "TERM 01 ",
        "44": "DO NOT HONOUR",
    }
    yield "completion_advice", {
        "t": "0220",
        "2": PAN,
        "3": "000000",
        "4": "000000012345",
        "11": "000103",
        "38": "A1B2C3",
        "39": "00",
        "41": "TERM0001",
        "42": "MERCHANT0000001",
    }
    original = "0200000101120210301500000012345000000000000"
    for mti in ["0400", "0401", "0420", "0421"]:
        yield f"reversal_{mti}", {
            "t": mti,
            "2": PAN,
            "3": "000000",
            "4": "000000012345",
            "11": "000104",
            "39": "68" if mti.startswith("042") else "00",
            "41": "TERM0001",
            "42": "MERCHANT0000001",
            "90": original[:42],
        }
    yield "batch_close", {
        "t": "0500",
        "11": "000105",
        "15": "1202",
        "41": "TERM0001",
        "42": "MERCHANT0000001",
        "74": "0000000002",
        "76": "0000000017",
        "86": "0000000000012345",
        "88": "0000000000098765",
        "97": "D0000000000086420",
    }
    yield "batch_upload", {
        "t": "0320",
        "2": PAN,
        "3": "000000",
        "4": "000000012345",
        "11": "000106",
        "37": "123456789012",
        "41": "TERM0001",
        "42": "MERCHANT0000001",
        "60": "0200000101",
    }
    for code in ["001", "002", "301"]:
        yield f"network_{code}", {
            "t": "0800",
            "7": "1202080000",
            "11": "000107",
            "70": code,
        }
    yield "network_response", {
        "t": "0810",
        "7": "1202080000",
        "11": "000107",
        "39": "00",
        "70": "301",
    }
    yield "fees_tracks_and_private_data", {
        "t": "0200",
        "2": "5413330089020011",
        "4": "000000000100",
        "11": "000108",
        "28": "C00000150",
        "29": "D00000025",
        "32": "12345678901",
        "36": "011234567890123445=724724000000000",
        "45": "B5413330089020011^PUBLIC/JOHN Q^2212101",
        "48": "Mixed: punctuation ~!@#$%^&*()_+{}|:\"<>? and spaces",
        "54": "1001840C000000010000",
        "61": "",
        "64": "FEDCBA9876543210",
        "102": "ACCOUNT-1",
        "103": "",
        "104": "A description",
        "128": "0011223344556677",
    }
    yield "no_fields", {"t": "0800"}
    yield "every_primary_field_at_maximum", every_field(range(2, 65))
    yield "every_secondary_field_at_maximum", every_field(range(66, 129))


def every_field(numbers):
    """Each field at its maximum length, with values in its data type."""
    hex_fields = {52, 55, 64, 96, 128}
    alnum_fields = {37, 38, 39, 40, 49, 50, 51, 91, 92, 93, 94, 95}
    numeric = set(range(2, 28)) | {32, 33, 53, 99, 100} | set(range(66, 91))
    msg = {"t": "0200"}
    for n in numbers:
        width = SPEC[str(n)]["max_len"]
        if n in hex_fields:
            value = ("0123456789ABCDEF" * 64)[:width]
        elif n in {28, 29, 30, 31, 97}:
            value = "D" + ("9" * (width - 1))
        elif n in {35, 36}:
            value = ("1234567890123456=" * 8)[:width]
        elif n in numeric:
            value = ("1234567890" * 10)[:width]
        elif n in alnum_fields:
            value = ("AB 12" * 10)[:width]
        else:
            value = ("Printable ASCII, ~!{}[]. " * 40)[:width]
        msg[str(n)] = value
    return msg


def invalid_messages(valid):
    """(name, bytes) that pyiso8583 refuses to decode."""
    by_name = dict(valid)
    sale_bytes = by_name["sale"]
    yield "trailing_bytes", sale_bytes + b"00"
    yield "truncated_last_field", sale_bytes[:-3]
    # Field 2's length prefix says 20: over its maximum of 19.
    yield "pan_longer_than_maximum", b"0200" + b"4000000000000000" + b"20" + b"1" * 20
    yield "non_numeric_length", b"0200" + b"4000000000000000" + b"1X" + b"1" * 16
    yield "bitmap_not_hex", b"0200" + b"40000000000000G0" + b"16" + b"1" * 16
    yield "truncated_bitmap", b"0200" + b"40000000"
    yield "truncated_mti", b"02"


def main():
    if iso8583.__version__ != EXPECTED_VERSION:
        sys.exit(f"pyiso8583 {EXPECTED_VERSION} expected, found {iso8583.__version__}")
    valid = []
    out = {"generator": f"pyiso8583 {iso8583.__version__}, spec default_ascii", "valid": [], "invalid": []}
    for name, fields in valid_messages():
        packed, _ = iso8583.encode(copy.deepcopy(fields), SPEC)
        decoded, _ = iso8583.decode(bytes(packed), SPEC)
        # pyiso8583 adds the bitmaps it computed; the rest must be ours.
        for bitmap in ("p", "1"):
            decoded.pop(bitmap, None)
        assert decoded == fields, (name, decoded, fields)
        valid.append((name, bytes(packed)))
        out["valid"].append({"name": name, "hex": bytes(packed).hex().upper(), "fields": fields})
    for name, data in invalid_messages(valid):
        try:
            iso8583.decode(data, SPEC)
        except iso8583.DecodeError as e:
            out["invalid"].append(
                {
                    "name": name,
                    "hex": data.hex().upper(),
                    "pyiso8583_error": str(e),
                    "field": e.field,
                    "pos": e.pos,
                }
            )
        else:
            sys.exit(f"pyiso8583 decoded invalid vector {name}")
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ascii_1987.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {len(out['valid'])} valid and {len(out['invalid'])} invalid vectors to {path}")


if __name__ == "__main__":
    main()
