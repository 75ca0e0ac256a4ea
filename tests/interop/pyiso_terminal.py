"""A terminal nobody here wrote: pyiso8583 (default_ascii spec) encodes the
requests named on the command line, sends each over TLS with the terminal's
client certificate (two-byte big-endian length header), decodes each answer,
and prints one JSON line per exchange: both messages as pyiso8583 decoded
them and as raw hex, for the Rust side to decode with its own codec and
compare field for field.

usage: pyiso_terminal.py HOST PORT CA CERT KEY TERMINAL MMDD NAME...
NAME: echo | sale:STAN:AMOUNT | advice:STAN:AMOUNT | reversal:STAN:AMOUNT
      | close:STAN:BATCH:SALES:AMOUNT:REVERSALS:AMOUNT
"""

import json
import socket
import ssl
import struct
import sys

import iso8583
from iso8583.specs import default_ascii as spec

VISA = "4111111111111111"


def request(name, terminal, mmdd):
    kind, *args = name.split(":")
    if kind == "echo":
        return {"t": "0800", "11": "000001", "41": terminal, "70": "301"}
    if kind == "sale":
        stan, amount = args
        return {
            "t": "0200", "2": VISA, "3": "000000", "4": f"{int(amount):012}",
            "11": stan, "12": "101500", "13": mmdd, "14": "2812", "22": "051",
            "25": "00", "41": terminal, "42": "MERCHANT0000001", "49": "978",
        }
    if kind in ("advice", "reversal"):
        stan, amount = args
        return {
            "t": "0220" if kind == "advice" else "0400", "3": "000000",
            "4": f"{int(amount):012}", "11": stan, "13": mmdd, "41": terminal,
            "49": "978",
        }
    if kind == "close":
        stan, batch, count, amount, reversals, reversed_amount = args
        return {
            "t": "0500", "11": stan, "41": terminal, "50": "978", "60": batch,
            "76": f"{int(count):010}", "77": f"{int(reversals):010}",
            "88": f"{int(amount):016}", "89": f"{int(reversed_amount):016}",
        }
    raise SystemExit(f"unknown request {name!r}")


def read_exactly(stream, n):
    data = b""
    while len(data) < n:
        chunk = stream.recv(n - len(data))
        if not chunk:
            raise SystemExit("the gateway closed the connection")
        data += chunk
    return data


def main():
    host, port, ca, cert, key, terminal, mmdd, *names = sys.argv[1:]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(ca)
    context.load_cert_chain(cert, key)
    with socket.create_connection((host, int(port)), timeout=15) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as stream:
            for name in names:
                doc = request(name, terminal, mmdd)
                encoded, _ = iso8583.encode(dict(doc), spec)
                stream.sendall(struct.pack(">H", len(encoded)) + bytes(encoded))
                (length,) = struct.unpack(">H", read_exactly(stream, 2))
                answer = read_exactly(stream, length)
                decoded, _ = iso8583.decode(answer, spec)
                print(json.dumps({
                    "name": name,
                    "request_hex": bytes(encoded).hex(),
                    "request": doc,
                    "answer_hex": answer.hex(),
                    "answer": decoded,
                }), flush=True)


main()
