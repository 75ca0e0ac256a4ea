#!/usr/bin/env python3
"""What the rendered chart must say, beyond being valid Kubernetes
(run by scripts/check-chart.sh on every rendered values file; ADR 26):

- only the gateway takes traffic from outside: every other NetworkPolicy
  ingress rule names its peers, and authorization's are exactly the
  gateway, the reversal handler and settlement (plus operators), and, with
  QR on, the QR platform to the receiver's port and no other;
- every service pod is deny-by-default in both directions;
- every container runs as non-root with a read-only root filesystem, no
  privilege escalation, every capability dropped and RuntimeDefault
  seccomp, and its service account token is not mounted;
- every replica reports its own service.instance.id (the exporter's
  `instance` label), so replicas' counters are separate series;
- no secret is in a ConfigMap or a plain environment value: the database
  URL, the fingerprint key and the QR acquirer key come from secretKeyRef.
"""

import re
import sys

import yaml

COMPONENT = "app.kubernetes.io/component"


def main(path):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    failures = []
    fail = failures.append
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    policies = {d["spec"]["podSelector"]["matchLabels"][COMPONENT]: d
                for d in docs if d["kind"] == "NetworkPolicy"}
    if not deployments:
        fail("no Deployment rendered")
    for deployment in deployments:
        component = deployment["spec"]["selector"]["matchLabels"][COMPONENT]
        policy = policies.get(component)
        if policy is None:
            fail(f"{component}: no NetworkPolicy")
            continue
        if sorted(policy["spec"]["policyTypes"]) != ["Egress", "Ingress"]:
            fail(f"{component}: NetworkPolicy does not cover both directions")
        for rule in policy["spec"].get("ingress", []):
            if not rule.get("from") and component != "gateway":
                fail(f"{component}: an ingress rule admits any source")
        pod = deployment["spec"]["template"]["spec"]
        if pod.get("automountServiceAccountToken") is not False:
            fail(f"{component}: the service account token is mounted")
        if pod["securityContext"].get("runAsNonRoot") is not True:
            fail(f"{component}: pod may run as root")
        for container in pod["containers"]:
            sc = container.get("securityContext", {})
            wanted = {
                "runAsNonRoot": True,
                "readOnlyRootFilesystem": True,
                "allowPrivilegeEscalation": False,
            }
            for key, value in wanted.items():
                if sc.get(key) is not value:
                    fail(f"{component}: securityContext.{key} is not {value}")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                fail(f"{component}: capabilities are not all dropped")
            if sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                fail(f"{component}: seccomp is not RuntimeDefault")
            for env in container.get("env", []):
                if env["name"] in ("SWITCH__DATABASE__URL", "SWITCH__AUTHORIZATION__PAN_HASH_KEY",
                                   "SWITCH__AUTHORIZATION__QR__KEY") \
                        and "secretKeyRef" not in env.get("valueFrom", {}):
                    fail(f"{component}: {env['name']} is not read from a Secret")
            attributes = next((e.get("value", "") for e in container.get("env", [])
                               if e["name"] == "OTEL_RESOURCE_ATTRIBUTES"), "")
            if "service.instance.id=$(POD_NAME)" not in attributes:
                fail(f"{component}: replicas do not report an instance id of their own")
            if not container.get("readinessProbe") or not container.get("livenessProbe"):
                fail(f"{component}: a probe is missing")
    gateway_open = [r for r in policies.get("gateway", {}).get("spec", {}).get("ingress", [])
                    if not r.get("from")]
    if not gateway_open:
        fail("gateway: no ingress rule admits terminals from outside")
    callers = set()
    for rule in policies.get("authorization", {}).get("spec", {}).get("ingress", []):
        for peer in rule.get("from", []):
            labels = peer.get("podSelector", {}).get("matchLabels", {})
            if COMPONENT in labels:
                callers.add(labels[COMPONENT])
    if callers != {"gateway", "reversal-handler", "settlement-batcher"}:
        fail(f"authorization: callers are {sorted(callers)}")
    # Rules with peers outside the cluster (ipBlock) on authorization: only
    # the QR platform's, and only to the port the receiver listens on.
    authorization = next((d for d in deployments
                          if d["spec"]["selector"]["matchLabels"][COMPONENT] == "authorization"), None)
    receiver_ports = set()
    if authorization:
        for container in authorization["spec"]["template"]["spec"]["containers"]:
            receiver_ports |= {p["containerPort"] for p in container.get("ports", [])
                               if p.get("name") == "qr-notify"}
    for rule in policies.get("authorization", {}).get("spec", {}).get("ingress", []):
        if any("ipBlock" in peer for peer in rule.get("from", [])):
            ports = {p.get("port") for p in rule.get("ports", [])}
            if not receiver_ports or ports != receiver_ports:
                fail(f"authorization: ingress from outside the cluster to ports {sorted(ports)}, "
                     f"the QR receiver's are {sorted(receiver_ports)}")
    # Keys whose values are secrets, at the start of a TOML line (so
    # `platform_url = ...` is not the database's `url`).
    for config in (d for d in docs if d["kind"] == "ConfigMap"):
        text = "\n".join(str(v) for v in config.get("data", {}).values())
        for key in ("pan_hash_key", "url", "secret", "key", "password", "sasl_password"):
            if re.search(rf"^\s*{key}\s*=", text, re.MULTILINE):
                fail(f"ConfigMap {config['metadata']['name']}: contains `{key} =`")
    if failures:
        sys.exit(f"check-manifests: {path}:\n  " + "\n  ".join(failures))
    print(f"check-manifests: {len(deployments)} services: policies, security contexts and secrets as required")


if __name__ == "__main__":
    main(sys.argv[1])
