#!/usr/bin/env python3
"""Fails when a dashboard or an alert queries a metric the services do not
emit (`make chart`, part of `make test`; ADR 26).

What is emitted is read from the source: every OpenTelemetry instrument
registered in crates/*/src (`.u64_counter("name")`, `.with_unit("ms")`,
...; a name made with `format!("{service}.…")` once for each service whose
gRPC server checks its callers), turned into the names Prometheus stores as the collector's prometheus
exporter writes them (deploy/otel-collector.yaml):

  dots and other characters outside [a-zA-Z0-9_:]  ->  "_"
  unit ms / s / By                                  ->  _milliseconds / _seconds / _bytes
  counter (monotonic sum)                           ->  _total
  histogram                                         ->  _bucket, _sum, _count
  gauge, up/down counter                            ->  the name itself

What is queried is every `expr` of deploy/dashboards/*.json and
deploy/alerts.yaml, parsed with Prometheus's own PromQL grammar
(scripts/promql-selectors.mjs), so a label or a function is never mistaken
for a metric and a query that does not parse fails too.

`--self-test` runs the same comparison on a made-up dashboard that queries
a metric nobody emits, an expression that does not parse and a bucket
bound the histogram does not have (an alert on it would select nothing and
never fire), and fails unless all three are reported: a checker that
passes everything cannot pass.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
INSTRUMENT = re.compile(
    r'\.(?:u64|i64|f64)_(counter|up_down_counter|histogram|gauge|'
    r'observable_counter|observable_up_down_counter|observable_gauge)\(\s*"([^"]+)"\s*\)'
)
# An instrument named per service, as the access layer names its refusals
# (`format!("{service}.grpc.refused")`, switch_platform::internal_tls):
# one name for each service whose gRPC server checks callers.
TEMPLATED = re.compile(
    r'\.(?:u64|i64|f64)_(counter|up_down_counter|histogram|gauge|'
    r'observable_counter|observable_up_down_counter|observable_gauge)\(\s*format!\(\s*"([^"]*\{service\}[^"]*)"\s*\)\s*\)'
)
SERVICE_NAME = re.compile(r'pub const SERVICE_NAME: &str = "([^"]+)";')
# A server built with the access table: GrpcServer::new(...) ... .internal(SERVICE_NAME, ...).
CHECKED_SERVER = re.compile(r'GrpcServer::new\([^;]*?\.internal\(\s*(?:crate::)?SERVICE_NAME\b', re.S)
UNIT = re.compile(r'\.with_unit\(\s*"([^"]*)"\s*\)')
BOUNDARIES = re.compile(r'\.with_boundaries\(\s*vec!\[([^\]]*)\]')
# The OpenTelemetry SDK's explicit bucket boundaries when an instrument
# names none (opentelemetry_sdk, the specification's default).
DEFAULT_BOUNDARIES = [0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0,
                      2500.0, 5000.0, 7500.0, 10000.0]
# A bucket selected by its bound: a bound the histogram does not have
# selects nothing, and an alert built on it never fires.
BUCKET_BOUND = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*_bucket)\s*\{[^}]*\ble\s*=\s*"([^"]+)"')
# The collector's unit words for the units the switch uses. A new unit must
# be added here, checked against the exporter, before a dashboard can use it.
UNIT_WORDS = {"": "", "ms": "milliseconds", "s": "seconds", "By": "bytes"}
# Grafana's variables are not PromQL; they are replaced before parsing.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def checked_services():
    """SERVICE_NAME of every crate whose gRPC server checks its callers."""
    services = []
    for crate in sorted((ROOT / "crates").iterdir()):
        sources = [p.read_text() for p in sorted(crate.glob("src/**/*.rs"))]
        name = next((m.group(1) for text in sources for m in [SERVICE_NAME.search(text)] if m), None)
        if name and any(CHECKED_SERVER.search(text) for text in sources):
            services.append(name)
    return services


def instruments():
    """(otel name, kind, unit, where, bucket bounds) of every instrument in the sources."""
    found = []
    services = None
    for path in sorted((ROOT / "crates").glob("*/src/**/*.rs")):
        text = path.read_text()
        matches = [(m, [m.group(2)]) for m in INSTRUMENT.finditer(text)]
        for match in TEMPLATED.finditer(text):
            if services is None:
                services = checked_services()
            matches.append((match, [match.group(2).replace("{service}", s) for s in services]))
        for match, names in matches:
            end = text.find(".build()", match.end())
            chain = text[match.end(): end if end != -1 else match.end()]
            unit = UNIT.search(chain)
            bounds = BOUNDARIES.search(chain)
            line = text.count("\n", 0, match.start()) + 1
            for name in names:
                found.append((name, match.group(1), unit.group(1) if unit else "",
                              f"{path.relative_to(ROOT)}:{line}",
                              [float(b) for b in bounds.group(1).split(",") if b.strip()]
                              if bounds else DEFAULT_BOUNDARIES))
    return found


def prometheus_names(name, kind, unit, where):
    if unit not in UNIT_WORDS:
        sys.exit(f"check-metrics: {where}: unit {unit!r} of {name} has no Prometheus "
                 "suffix in UNIT_WORDS; add the collector's word for it")
    base = re.sub(r"[^a-zA-Z0-9_:]", "_", name)
    if UNIT_WORDS[unit] and not base.endswith("_" + UNIT_WORDS[unit]):
        base += "_" + UNIT_WORDS[unit]
    if kind in ("counter", "observable_counter"):
        return {base + "_total"}
    if kind == "histogram":
        return {base + "_bucket", base + "_sum", base + "_count"}
    return {base}


def emitted():
    """Prometheus name -> (description, bucket bounds for a _bucket series)."""
    names = {}
    for name, kind, unit, where, bounds in instruments():
        for prom in prometheus_names(name, kind, unit, where):
            names[prom] = (f"{name} ({kind}{', ' + unit if unit else ''}) at {where}",
                           bounds if prom.endswith("_bucket") else None)
    return names


def queries():
    """(file, where in it, expression) of every query."""
    found = []
    for path in sorted((ROOT / "deploy" / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        stack = list(dashboard.get("panels", []))
        while stack:
            panel = stack.pop(0)
            stack.extend(panel.get("panels", []))
            for target in panel.get("targets", []):
                if "expr" in target:
                    found.append((path, f"panel {panel.get('title')!r}", target["expr"]))
    alerts = ROOT / "deploy" / "alerts.yaml"
    for group in yaml.safe_load(alerts.read_text())["groups"]:
        for rule in group["rules"]:
            found.append((alerts, f"rule {rule.get('alert') or rule.get('record')}", rule["expr"]))
    return found


def parse(expressions):
    script = ROOT / "scripts" / "promql-selectors.mjs"
    text = []
    for expr in expressions:
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        text.append(expr)
    out = subprocess.run(["node", str(script)], input=json.dumps(text), capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"check-metrics: the PromQL parser failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def problems(known, found):
    parsed = parse([expr for _, _, expr in found])
    report = []
    for (path, where, expr), result in zip(found, parsed):
        label = f"{path.relative_to(ROOT) if path.is_absolute() else path}: {where}"
        for error in result["errors"]:
            report.append(f"{label}: {error}")
        if not result["metrics"] and not result["errors"]:
            report.append(f"{label}: queries no metric at all")
        for metric in result["metrics"]:
            if metric not in known:
                report.append(f"{label}: {metric} is not emitted by any service")
        for metric, bound in BUCKET_BOUND.findall(expr):
            bounds = known.get(metric, (None, None))[1]
            if bounds is not None and bound != "+Inf" and float(bound) not in bounds:
                report.append(f"{label}: {metric} has no bucket le=\"{bound}\" "
                              f"(its bounds: {', '.join(f'{b:g}' for b in bounds)})")
    return report


def self_test(known):
    fake = [
        (Path("made-up-dashboard.json"), "panel 'invented'",
         "sum(rate(authorization_approvals_invented_total[$__rate_interval]))"),
        (Path("made-up-dashboard.json"), "panel 'broken'", "sum(rate(authorization_decisions_total[5m])"),
        (Path("made-up-dashboard.json"), "panel 'no such bucket'",
         'sum(rate(reversal_handler_deadline_to_request_milliseconds_bucket{le="4000"}[5m]))'),
        (Path("made-up-dashboard.json"), "panel 'fine'",
         'sum by (outcome) (rate(authorization_decisions_total{outcome="declined"}[5m]))'),
    ]
    report = problems(known, fake)
    caught_name = any("authorization_approvals_invented_total is not emitted" in line for line in report)
    caught_syntax = any("'broken'" in line and "syntax error" in line for line in report)
    caught_bucket = any("'no such bucket'" in line and 'le="4000"' in line for line in report)
    clean = not any("'fine'" in line for line in report)
    if not (caught_name and caught_syntax and caught_bucket and clean):
        sys.exit("check-metrics: self-test failed; the checker reported:\n  " + "\n  ".join(report))
    print("check-metrics: self-test: a made-up metric, a broken query and a bucket bound the "
          "histogram lacks are caught, a good query passes")


def main():
    known = emitted()
    if len(known) < 40:
        sys.exit(f"check-metrics: only {len(known)} Prometheus names found in the sources; "
                 "the instrument pattern no longer matches the code")
    if "--table" in sys.argv:
        for prom in sorted(known):
            print(f"{prom}\t{known[prom][0]}")
        return
    if "--self-test" in sys.argv:
        self_test(known)
        return
    found = queries()
    report = problems(known, found)
    if report:
        sys.exit("check-metrics: dashboards or alerts query what the services do not emit:\n  "
                 + "\n  ".join(report))
    used = {m for result in parse([e for _, _, e in found]) for m in result["metrics"]}
    print(f"check-metrics: {len(found)} queries in {len({p for p, _, _ in found})} files name "
          f"{len(used)} metrics, every one emitted ({len(known)} Prometheus names from "
          f"{len(instruments())} instruments)")


if __name__ == "__main__":
    main()
