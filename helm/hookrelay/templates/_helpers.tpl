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

{{/*
The Secret mounted at /etc/hookrelay/secrets: secrets.existingSecret, or one the
chart creates from secrets.values, which must then hold every key the config reads
from there. There is no default secret: nothing renders until one is given.
*/}}
{{- define "hookrelay.secretName" -}}
{{- if .Values.secrets.existingSecret -}}
{{- .Values.secrets.existingSecret -}}
{{- else -}}
{{- $needed := list -}}
{{- range regexFindAll "/etc/hookrelay/secrets/[^\"]+" (toJson .Values.config) -1 -}}
{{- $needed = append $needed (trimPrefix "/etc/hookrelay/secrets/" .) -}}
{{- end -}}
{{- $needed = $needed | uniq | sortAlpha -}}
{{- $values := .Values.secrets.values | default dict -}}
{{- if not $values -}}
{{- $sets := list -}}
{{- range $needed -}}{{- $sets = append $sets (printf "secrets.values.%s=..." .) -}}{{- end -}}
{{- fail (printf "no webhook secret: the chart has no default. Set secrets.existingSecret to a Secret you created (keys: %s), or %s for the chart to create one" (join ", " $needed) (join ", " $sets)) -}}
{{- end -}}
{{- range $needed -}}
{{- if not (index $values .) -}}
{{- fail (printf "config reads /etc/hookrelay/secrets/%s, but secrets.values has no %q (and secrets.existingSecret is not set)" . .) -}}
{{- end -}}
{{- end -}}
{{- printf "%s-secrets" (include "hookrelay.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/*
The port of a listen address in config.server ("0.0.0.0:8080", "[::]:8080"): the
container ports follow it, and the probes, Services and NetworkPolicy name those
ports, so changing a listen address moves everything with it. Called with
(list KEY .Values); refuses an address without a port or on loopback, which
neither the kubelet's probes nor the Service could reach.
*/}}
{{- define "hookrelay.listenPort" -}}
{{- $key := index . 0 -}}
{{- $addr := dig "server" $key "" (index . 1).config -}}
{{- if not (kindIs "string" $addr) -}}{{- $addr = "" -}}{{- end -}}
{{- $port := regexFind "[0-9]+$" (regexFind ":[0-9]+$" $addr) -}}
{{- $host := trimSuffix (printf ":%s" $port) $addr -}}
{{- if or (not $port) (lt (atoi $port) 1) (gt (atoi $port) 65535) -}}
{{- fail (printf "config.server.%s (%q) needs an address with a port, e.g. \"0.0.0.0:%s\": the pod's ports and probes are taken from it" $key $addr (ternary "8080" "9090" (eq $key "listen"))) -}}
{{- end -}}
{{- if or (hasPrefix "127." $host) (eq $host "[::1]") (eq $host "localhost") -}}
{{- fail (printf "config.server.%s (%q) listens on loopback: in a pod, probes and Services reach the pod's address; use \"0.0.0.0:%s\"" $key $addr $port) -}}
{{- end -}}
{{- $port -}}
{{- end -}}

{{- define "hookrelay.webhookPort" -}}
{{- include "hookrelay.listenPort" (list "listen" .Values) -}}
{{- end -}}

{{- define "hookrelay.adminPort" -}}
{{- $admin := include "hookrelay.listenPort" (list "admin_listen" .Values) -}}
{{- if eq $admin (include "hookrelay.webhookPort" .) -}}
{{- fail (printf "config.server.listen and admin_listen share port %s: webhooks and the admin port (metrics, probes) need one each" $admin) -}}
{{- end -}}
{{- $admin -}}
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
{{- if not (or (kindIs "map" $v) (kindIs "invalid" $v)) }}
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

{{/*
config.sinks as rendered: the sinks named in the values (a null one is left out),
or, when none is, the quickstart file sink on the data volume.
*/}}
{{- define "hookrelay.sinks" -}}
{{- $sinks := dict -}}
{{- range $name, $sink := (.Values.config.sinks | default dict) -}}
{{- if not (kindIs "invalid" $sink) -}}{{- $_ := set $sinks $name $sink -}}{{- end -}}
{{- end -}}
{{- if not $sinks -}}
{{- $_ := set $sinks "file" (dict "type" "file" "dir" "/var/lib/hookrelay/events") -}}
{{- end -}}
{{- toJson $sinks -}}
{{- end -}}

{{- define "hookrelay.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- $_ := set $config "sinks" (include "hookrelay.sinks" . | fromJson) -}}
# Rendered by the hookrelay Helm chart from .Values.config.
{{- include "hookrelay.tomlTable" (dict "path" "" "table" $config) }}
{{- if .Values.tls.enabled }}

[server.tls]
cert_file = "/etc/hookrelay/tls/tls.crt"
key_file = "/etc/hookrelay/tls/tls.key"
{{- end }}
{{- end -}}
