#!/usr/bin/env python3
"""The chart's schema and the switch's configuration name the same keys
(run by scripts/check-chart.sh on `switchd --dump-config all`; ADR 26).

Every key `switchd` has in a service's section is either one the chart
sets itself or one the schema lets `<service>.config` set; every key the
schema offers is one `switchd` has. So a key added to the switch is either
wired or offered, and a key removed from it cannot linger in the schema
(where a user setting it would crash the pods at start).
"""

import json
import sys
import tomllib

SECTIONS = {  # switch section -> values key, and the keys the chart sets itself
    "authorization": ("authorization", {"listen", "issuer_endpoint", "issuer_name", "pan_hash_key", "pan_hash_key_id"}),
    "gateway": ("gateway", {"listen", "authorization_endpoint", "settlement_endpoint", "tls",
                            "crl_path", "terminal_registry_path", "iso_listeners"}),
    "reversal_handler": ("reversalHandler", {"listen", "authorization_endpoint"}),
    "settlement": ("settlementBatcher", {"listen", "authorization_endpoint", "payout_dir"}),
    # endpoints carry secrets: registered with RegisterEndpoint, not values.
    "notifier": ("notifier", {"listen", "endpoints", "webhook_destinations"}),
}
# Sub-sections the chart offers under a values key of their own rather
# than `<service>.config`: switch sub-section -> values key, and the keys
# the chart sets itself. `authorization.qr` (QR payments) is in the dump
# of `switchd all` only, where development derives the link to the QR
# simulator (ADR 29); that is the dump check-chart.sh compares.
SUBSECTIONS = {
    ("authorization", "qr"): ("qr", {"platform_url", "key", "ca_path", "notify_listen",
                                     "notify_cert_path", "notify_key_path", "orphan_policy",
                                     "merchant_policies"}),
}
# Maps keyed by merchant or channel: empty by default, so the dump shows
# no keys under them to compare.
OPEN_MAPS = {"merchants", "channels"}
# Keys switchd has that the chart does not offer as `<service>.config`
# keys: the previous fingerprint keys are secrets, each from a Secret
# (`panFingerprintKey.previousKeys`, ADR 33), set in the environment.
NOT_OFFERED = {"authorization": {"pan_hash_previous_keys"}}


def compare(dumped, schema, path, problems):
    properties = schema.get("properties", {})
    for key, value in dumped.items():
        if key not in properties:
            problems.append(f"{path}.{key}: switchd has it, the schema neither offers nor the chart sets it")
        elif isinstance(value, dict) and "properties" in properties[key] and key not in OPEN_MAPS:
            compare(value, properties[key], f"{path}.{key}", problems)
    for key in properties:
        if key not in dumped and key not in OPEN_MAPS:
            problems.append(f"{path}.{key}: the schema offers it, switchd has no such key")


def main(schema_path, dump_path):
    schema = json.load(open(schema_path))
    dumped = tomllib.load(open(dump_path, "rb"))
    problems = []
    for section, (values_key, owned) in SECTIONS.items():
        config = schema["properties"][values_key]["properties"]["config"]
        skipped = owned | {sub for (sec, sub) in SUBSECTIONS if sec == section} | NOT_OFFERED.get(section, set())
        offered = {k: v for k, v in dumped[section].items() if k not in skipped}
        compare(offered, config, section, problems)
        for key in owned:
            if key not in dumped[section] and key not in ("tls", "crl_path", "terminal_registry_path"):
                problems.append(f"{section}.{key}: the chart sets it, switchd has no such key")
    for (section, sub), (values_key, owned) in SUBSECTIONS.items():
        path = f"{section}.{sub}"
        if sub not in dumped[section]:
            problems.append(f"{path}: the chart offers it, the dump has no such section")
            continue
        config = schema["properties"][values_key]["properties"]["config"]
        offered = {k: v for k, v in dumped[section][sub].items() if k not in owned}
        compare(offered, config, path, problems)
        for key in owned:
            if key not in dumped[section][sub]:
                problems.append(f"{path}.{key}: the chart sets it, switchd has no such key")
    if problems:
        sys.exit("check-schema: values.schema.json and switchd disagree:\n  " + "\n  ".join(problems))
    print(f"check-schema: every key of {len(SECTIONS)} service sections and {len(SUBSECTIONS)} sub-section"
          " is set by the chart or offered by the schema, and no other")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
