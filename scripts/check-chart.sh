#!/usr/bin/env bash
# Checks the Helm chart off-line (`make chart`, part of `make test`; ADR 26):
#   1. `helm lint` with the default values and with each example values file;
#   2. `helm template` of each, every manifest validated against the
#      Kubernetes schemas of the oldest and newest supported versions with
#      `kubernetes-validate --strict` (unknown fields rejected);
#   3. what the manifests must say beyond being valid (scripts/check-manifests.py:
#      network policies, security contexts, secrets only from Secrets);
#   4. the schema offers exactly the keys switchd has (scripts/check-schema.py);
#      the rendered switch.toml loaded by `switchd --dump-config` (when a
#      switchd binary is built), so a key the switch does not know, or a
#      value of the wrong type, fails here rather than in a crash-looping pod;
#   5. every values file under ci/refused/ MUST be refused, with the error
#      its `# expect:` line names;
#   6. the validator itself refuses a manifest with an unknown field, so a
#      validator that passes everything cannot pass this script.
set -euo pipefail

cd "$(dirname "$0")/.."
CHART=helm/switch
HELM=${HELM:?set HELM to the helm binary (make chart installs it)}
KUBERNETES_VALIDATE=${KUBERNETES_VALIDATE:?set KUBERNETES_VALIDATE (make chart installs it)}
# The chart's kubeVersion floor (gRPC probes are GA from 1.27) and the
# newest version kubernetes-validate ships.
KUBERNETES_VERSIONS=${KUBERNETES_VERSIONS:-1.27.0 1.37.0}
# `make chart` builds it first; run by hand without a build, the two
# checks that need it say they were skipped.
SWITCHD=${SWITCHD:-target/debug/switchd}
# PyYAML comes with kubernetes-validate, in its virtual environment.
PYTHON=${PYTHON:-$(dirname "$KUBERNETES_VALIDATE")/python}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

render() { # name, then helm template arguments
    local name=$1 version
    shift
    "$HELM" lint --strict --quiet "$CHART" "$@" >"$work/$name.lint" 2>&1 ||
        { cat "$work/$name.lint"; echo "check-chart: helm lint failed for $name" >&2; exit 1; }
    for version in $KUBERNETES_VERSIONS; do
        "$HELM" template switch "$CHART" --namespace payments --kube-version "$version" "$@" \
            >"$work/$name-$version.yaml"
        "$KUBERNETES_VALIDATE" --strict --quiet --kubernetes-version "$version" \
            "$work/$name-$version.yaml" ||
            { echo "check-chart: $name does not validate against Kubernetes $version" >&2; exit 1; }
    done
    local count
    count=$(grep -c '^kind:' "$work/$name-${version}.yaml")
    echo "check-chart: $name: lint ok, $count manifests valid against Kubernetes ${KUBERNETES_VERSIONS// / and }"
    "$PYTHON" scripts/check-manifests.py "$work/$name-${version}.yaml"
    check_config "$name" "$work/$name-${version}.yaml"
}

check_config() { # name, rendered manifests
    if [[ ! -x $SWITCHD ]]; then
        echo "check-chart: $SWITCHD not built; the rendered switch.toml is not checked against switchd"
        return
    fi
    "$PYTHON" - "$2" "$work/$1.toml" <<'PY'
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc["kind"] == "ConfigMap" and doc["metadata"]["name"].endswith("-config"):
        open(sys.argv[2], "w").write(doc["data"]["switch.toml"])
        break
else:
    sys.exit("no config ConfigMap rendered")
PY
    # Placeholders for what the pods get from Secrets. The QR key only
    # where the chart renders [authorization.qr]: set alone, the variable
    # would create the section and turn QR on.
    local qr_key=()
    if grep -qx '\[authorization\.qr\]' "$work/$1.toml"; then
        qr_key=(SWITCH__AUTHORIZATION__QR__KEY=placeholder-qr-acquirer-key)
    fi
    env SWITCH__DATABASE__URL=postgres://switch:placeholder@db.invalid:5432/switch \
        SWITCH__KAFKA__SASL_PASSWORD=placeholder "${qr_key[@]}" \
        "$SWITCHD" --config "$work/$1.toml" --dump-config all >"$work/$1.dump" ||
        { echo "check-chart: switchd refuses the config the chart renders for $1" >&2; exit 1; }
    echo "check-chart: $1: switchd loads the rendered switch.toml"
}

if [[ -x $SWITCHD ]]; then
    "$SWITCHD" --dump-config all >"$work/defaults.toml"
    "$PYTHON" scripts/check-schema.py "$CHART/values.schema.json" "$work/defaults.toml"
fi

render defaults
for values in "$CHART"/ci/*-values.yaml; do
    render "$(basename "$values" .yaml)" -f "$values"
done

refused=0
for values in "$CHART"/ci/refused/*.yaml; do
    expect=$(sed -n 's/^# expect: //p' "$values")
    [[ -n $expect ]] || { echo "check-chart: $values has no '# expect:' line" >&2; exit 1; }
    if "$HELM" template switch "$CHART" -f "$values" >/dev/null 2>"$work/refused.err"; then
        echo "check-chart: $values was accepted; the schema must refuse it ($expect)" >&2
        exit 1
    fi
    if ! grep -qF -- "$expect" "$work/refused.err"; then
        echo "check-chart: $values was refused, but not for '$expect':" >&2
        cat "$work/refused.err" >&2
        exit 1
    fi
    refused=$((refused + 1))
done
echo "check-chart: $refused broken values files refused, each for its expected reason"

sed 's/^spec:$/spec:\n  unknownField: true/' "$work/defaults-1.37.0.yaml" >"$work/unknown-field.yaml"
if "$KUBERNETES_VALIDATE" --strict --quiet --kubernetes-version 1.37.0 "$work/unknown-field.yaml" >/dev/null 2>&1; then
    echo "check-chart: kubernetes-validate accepted a manifest with an unknown field" >&2
    exit 1
fi
echo "check-chart: kubernetes-validate --strict refuses an unknown field"
