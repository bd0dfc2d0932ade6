{{- define "hookrelay.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "hookrelay.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "hookrelay.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{ include "hookrelay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "hookrelay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hookrelay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "hookrelay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "hookrelay.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "hookrelay.secretName" -}}
{{- default (printf "%s-secrets" (include "hookrelay.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* StatefulSet unless every source answers after the broker (no spool). */}}
{{- define "hookrelay.workload" -}}
{{- if ne .Values.workload "auto" -}}
{{- .Values.workload -}}
{{- else -}}
{{- $durable := false -}}
{{- range $name, $src := .Values.config.sources -}}
{{- if ne (default "durable" $src.ack) "broker" -}}{{- $durable = true -}}{{- end -}}
{{- end -}}
{{- if $durable -}}StatefulSet{{- else -}}Deployment{{- end -}}
{{- end -}}
{{- end -}}

{{/*
TOML from the values: Helm's toToml prints every number as a float (30.0), which
hookrelay's integer settings refuse, so scalars are written here.
*/}}
{{- define "hookrelay.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ . | toJson }}{{- end -}}
{{- end -}}

{{- define "hookrelay.tomlValue" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}{{ $v | toJson }}
{{- else if kindIs "bool" $v -}}{{ $v }}
{{- else if or (kindIs "float64" $v) (kindIs "int64" $v) (kindIs "int" $v) -}}
{{- if eq (float64 $v) (floor $v) -}}{{ int64 $v }}{{- else -}}{{ $v }}{{- end -}}
{{- else if kindIs "slice" $v -}}[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "hookrelay.tomlValue" $e }}{{ end }}]
{{- else if kindIs "map" $v -}}{ {{- $first := true -}}{{ range $k, $e := $v }}{{ if not $first }}, {{ end }}{{ $first = false }}{{ include "hookrelay.tomlKey" $k }} = {{ include "hookrelay.tomlValue" $e }}{{ end }} }
{{- end -}}
{{- end -}}

{{- define "hookrelay.tomlTable" -}}
{{- $path := .path -}}
{{- $table := .table -}}
{{- range $k, $v := $table }}
{{- if not (kindIs "map" $v) }}
{{ include "hookrelay.tomlKey" $k }} = {{ include "hookrelay.tomlValue" $v }}
{{- end }}
{{- end }}
{{- range $k, $v := $table }}
{{- if kindIs "map" $v }}
{{- $sub := ternary (include "hookrelay.tomlKey" $k) (printf "%s.%s" $path (include "hookrelay.tomlKey" $k)) (eq $path "") }}

[{{ $sub }}]
{{- include "hookrelay.tomlTable" (dict "path" $sub "table" $v) }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "hookrelay.config" -}}
# Rendered by the hookrelay Helm chart from .Values.config.
{{- include "hookrelay.tomlTable" (dict "path" "" "table" .Values.config) }}
{{- if .Values.tls.enabled }}

[server.tls]
cert_file = "/etc/hookrelay/tls/tls.crt"
key_file = "/etc/hookrelay/tls/tls.key"
{{- end }}
{{- end -}}
