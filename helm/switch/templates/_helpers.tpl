{{/*
The chart's table of services, one row each: the component name (object
names, labels), the `switchd` subcommand, the values key, the config
section and what may call it. Every per-service template ranges over this
table, so a service added here gets its Deployment, Service, probes,
budget and network policy the same way (ADR 26).
*/}}
{{- define "switch.services" -}}
- component: authorization
  command: authorization
  values: authorization
  section: authorization
  callers: [gateway, reversal-handler, settlement-batcher]
  operators: true
  egress: [postgres, kafka, otlp, issuer]
  calls: [issuer-simulator]
- component: gateway
  command: terminal-gateway
  values: gateway
  section: gateway
  callers: []
  external: true
  operators: false
  egress: [postgres, kafka, otlp]
  calls: [authorization, settlement-batcher]
- component: reversal-handler
  command: reversal-handler
  values: reversalHandler
  section: reversal_handler
  callers: []
  operators: true
  egress: [postgres, kafka, otlp]
  calls: [authorization]
- component: settlement-batcher
  command: settlement-batcher
  values: settlementBatcher
  section: settlement
  callers: [gateway]
  operators: true
  egress: [postgres, kafka, otlp]
  calls: [authorization]
- component: notifier
  command: notifier
  values: notifier
  section: notifier
  callers: []
  operators: true
  egress: [postgres, kafka, otlp, webhooks]
  calls: []
{{- if .Values.issuerSimulator.enabled }}
- component: issuer-simulator
  command: issuer-simulator
  values: issuerSimulator
  section: issuer_simulator
  callers: [authorization]
  operators: false
  egress: [postgres, otlp]
  calls: []
{{- end }}
{{- end -}}

{{- define "switch.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The object name of a component: <release>-<chart>-<component>. */}}
{{- define "switch.componentName" -}}
{{- printf "%s-%s" (include "switch.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "switch.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "switch.labels" -}}
{{ include "switch.selectorLabels" . }}
app.kubernetes.io/part-of: pos-switch
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "switch.image" -}}
{{- $image := .Values.image -}}
{{- if $image.digest -}}
{{ $image.repository }}@{{ $image.digest }}
{{- else -}}
{{ $image.repository }}:{{ $image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* The URL another service calls a component at. */}}
{{- define "switch.url" -}}
{{- $values := index .root.Values .values -}}
{{- printf "%s://%s:%d" (ternary "https" "http" .root.Values.internalTls.enabled) (include "switch.componentName" .) (int $values.port) -}}
{{- end -}}

{{/*
Readiness is the service's gRPC health (NOT_SERVING until PostgreSQL,
Kafka or its consumer group is there, and from SIGTERM on). The kubelet's
own gRPC probe speaks plaintext only, so behind internal mTLS the pod
asks itself with `switchd admin health`, presenting its own service
certificate; the gateway's port takes terminal certificates, so it is
probed for accepting connections.
*/}}
{{- define "switch.readinessProbe" -}}
{{- if eq .component "gateway" -}}
tcpSocket:
  port: grpc
{{- else if .root.Values.internalTls.enabled -}}
exec:
  command: ["/usr/local/bin/switchd", "admin", "health", "--service", {{ .command | quote }}, "--server-name", {{ include "switch.componentName" . | quote }}]
{{- else -}}
grpc:
  port: {{ .port }}
{{- end }}
periodSeconds: 5
timeoutSeconds: 3
failureThreshold: 2
{{- end -}}

{{/*
Liveness asks only whether the process accepts connections: a service
that is NOT_SERVING because PostgreSQL or Kafka is away, or because it is
draining, must not be restarted for it.
*/}}
{{- define "switch.livenessProbe" -}}
tcpSocket:
  port: grpc
periodSeconds: 10
timeoutSeconds: 2
failureThreshold: 6
{{- end -}}

{{- define "switch.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "switch.containerSecurityContext" -}}
runAsNonRoot: true
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Environment every switchd container gets: config file, database URL, OTLP. */}}
{{- define "switch.commonEnv" -}}
- name: SWITCH_CONFIG
  value: /etc/switch/switch.toml
- name: SWITCH__DATABASE__URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.urlSecret.name }}
      key: {{ .Values.database.urlSecret.key }}
{{- if .Values.kafka.sasl.passwordSecret.name }}
- name: SWITCH__KAFKA__SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.passwordSecret.name }}
      key: {{ .Values.kafka.sasl.passwordSecret.key }}
{{- end }}
{{- if .Values.telemetry.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.telemetry.otlpEndpoint | quote }}
{{- end }}
# Replicas of a service share its service.name: without an instance id of
# their own, the collector's Prometheus exporter would write every
# replica's cumulative counters into one series, and rates would be noise.
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: OTEL_RESOURCE_ATTRIBUTES
  value: "service.instance.id=$(POD_NAME),k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE),service.version={{ .Chart.AppVersion }}"
{{- end -}}

{{/*
TOML from a map, for the switch's config file. Helm's own toToml turns
every YAML number into a float ("5000.0"), which the switch's integer keys
refuse, so whole numbers are written as integers here. Keys are sorted;
scalars and arrays of scalars come before sub-tables, as TOML requires.
*/}}
{{- define "switch.toml.value" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}{{ toJson $v }}
{{- else if kindIs "bool" $v -}}{{ $v }}
{{- else if or (kindIs "float64" $v) (kindIs "int64" $v) (kindIs "int" $v) -}}
{{- if eq (float64 $v) (float64 (int64 $v)) -}}{{ int64 $v }}{{- else -}}{{ fail (printf "not an integer: %v (the switch uses no fractional numbers)" $v) }}{{- end -}}
{{- else if kindIs "slice" $v -}}[{{- range $i, $e := $v -}}{{- if $i -}}, {{ end -}}{{- include "switch.toml.value" $e -}}{{- end -}}]
{{- else -}}{{ fail (printf "cannot write %v as TOML" $v) }}
{{- end -}}
{{- end -}}

{{- define "switch.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{- define "switch.toml.isTableArray" -}}
{{- if and (kindIs "slice" .) (gt (len .) 0) (kindIs "map" (first .)) -}}true{{- end -}}
{{- end -}}

{{/* Arguments: a dict with "path" (the table's header) and "table" (a map). */}}
{{- define "switch.toml.table" -}}
{{- $path := .path -}}
{{- $table := .table -}}
{{- if $path }}
[{{ $path }}]
{{- end }}
{{- range $key := keys $table | sortAlpha }}
{{- $v := index $table $key }}
{{- if and (not (kindIs "map" $v)) (not (include "switch.toml.isTableArray" $v)) (not (kindIs "invalid" $v)) }}
{{ include "switch.toml.key" $key }} = {{ include "switch.toml.value" $v }}
{{- end }}
{{- end }}
{{- range $key := keys $table | sortAlpha }}
{{- $v := index $table $key }}
{{- $sub := ternary (printf "%s.%s" $path (include "switch.toml.key" $key)) (include "switch.toml.key" $key) (ne $path "") }}
{{- if kindIs "map" $v }}
{{ include "switch.toml.table" (dict "path" $sub "table" $v) }}
{{- else if include "switch.toml.isTableArray" $v }}
{{- range $item := $v }}

[[{{ $sub }}]]
{{- range $k := keys $item | sortAlpha }}
{{ include "switch.toml.key" $k }} = {{ include "switch.toml.value" (index $item $k) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The CAs the services verify their servers with: the database's (for
verify-full) and the Kafka brokers' (for ssl / sasl_ssl). */}}
{{- define "switch.serverCaMounts" -}}
{{- if .Values.database.caSecret }}
- name: database-ca
  mountPath: /etc/switch/tls/database
  readOnly: true
{{- end }}
{{- if .Values.kafka.caSecret }}
- name: kafka-ca
  mountPath: /etc/switch/tls/kafka
  readOnly: true
{{- end }}
{{- end -}}

{{- define "switch.serverCaVolumes" -}}
{{- if .Values.database.caSecret }}
- name: database-ca
  secret:
    secretName: {{ .Values.database.caSecret }}
    defaultMode: 0440
{{- end }}
{{- if .Values.kafka.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.caSecret }}
    defaultMode: 0440
{{- end }}
{{- end -}}
