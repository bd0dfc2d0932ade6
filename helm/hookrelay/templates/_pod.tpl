{{- define "hookrelay.podTemplate" -}}
{{- $deadline := int (default 30 (.Values.config.server).drain_deadline_secs) -}}
{{- if le (int .Values.terminationGracePeriodSeconds) (add (int .Values.preStopSleepSeconds) $deadline) -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + config.server.drain_deadline_secs (%d): the kubelet would kill the drain" (int .Values.terminationGracePeriodSeconds) (add (int .Values.preStopSleepSeconds) $deadline)) -}}
{{- end -}}
metadata:
  labels:
    {{- include "hookrelay.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    # A config or secret change rolls the pods.
    checksum/config: {{ include "hookrelay.config" . | sha256sum }}
    checksum/secret: {{ toJson .Values.secrets | sha256sum }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "hookrelay.serviceAccountName" . }}
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  securityContext:
    {{- $podSecurity := deepCopy .Values.podSecurityContext }}
    {{- with .Values.sysctls }}
    {{- $_ := set $podSecurity "sysctls" . }}
    {{- end }}
    {{- toYaml $podSecurity | nindent 4 }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if .Values.configCheck.enabled }}
  initContainers:
    # The config as hookrelay itself reads it, before it runs: a bad setting, a
    # missing secret or an unwritable spool directory holds the pod at this step
    # (Init:Error, retried as Init:CrashLoopBackOff) with the reason in
    # `kubectl describe pod` and `kubectl logs POD -c check`.
    - name: check
      image: "{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}"
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args: ["check", "--config", "/etc/hookrelay/config/hookrelay.toml"]
      terminationMessagePolicy: FallbackToLogsOnError
      {{- include "hookrelay.containerEnv" . | nindent 6 }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      resources:
        {{- toYaml .Values.configCheck.resources | nindent 8 }}
      volumeMounts:
        {{- include "hookrelay.volumeMounts" . | nindent 8 }}
  {{- end }}
  containers:
    - name: hookrelay
      image: "{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}"
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args: ["run", "--config", "/etc/hookrelay/config/hookrelay.toml"]
      terminationMessagePolicy: FallbackToLogsOnError
      ports:
        # From config.server.listen and admin_listen; probes, Services and the
        # NetworkPolicy refer to these by name.
        - name: webhooks
          containerPort: {{ include "hookrelay.webhookPort" . }}
          protocol: TCP
        - name: admin
          containerPort: {{ include "hookrelay.adminPort" . }}
          protocol: TCP
      {{- include "hookrelay.containerEnv" . | nindent 6 }}
      startupProbe:
        httpGet: {path: /healthz, port: admin}
        periodSeconds: 2
        failureThreshold: 60
      livenessProbe:
        httpGet: {path: /healthz, port: admin}
        periodSeconds: 10
        failureThreshold: 3
      readinessProbe:
        httpGet: {path: /readyz, port: admin}
        periodSeconds: 5
        failureThreshold: 2
      lifecycle:
        preStop:
          # Keep serving while the endpoint is removed from Services and load
          # balancers; SIGTERM (readiness off, drain) follows.
          sleep:
            seconds: {{ .Values.preStopSleepSeconds }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      volumeMounts:
        {{- include "hookrelay.volumeMounts" . | nindent 8 }}
  volumes:
    - name: config
      configMap:
        name: {{ include "hookrelay.fullname" . }}
    - name: secrets
      secret:
        secretName: {{ include "hookrelay.secretName" . }}
    {{- if .Values.tls.enabled }}
    - name: tls
      secret:
        secretName: {{ required "tls.secretName is required when tls.enabled" .Values.tls.secretName }}
    {{- end }}
    {{- if eq (include "hookrelay.workload" .) "Deployment" }}
    - name: data
      emptyDir: {}
    {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- range . }}
    - {{ toYaml . | nindent 6 | trim }}
      labelSelector:
        matchLabels:
          {{- include "hookrelay.selectorLabels" $ | nindent 10 }}
    {{- end }}
  {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}


{{/* The environment of hookrelay's containers (run and check alike). */}}
{{- define "hookrelay.containerEnv" -}}
{{- with .Values.env -}}
env:
  {{- toYaml . | nindent 2 }}
{{- end -}}
{{- end -}}

{{/* What hookrelay's containers (run and check alike) mount. */}}
{{- define "hookrelay.volumeMounts" -}}
- name: config
  mountPath: /etc/hookrelay/config
  readOnly: true
- name: secrets
  mountPath: /etc/hookrelay/secrets
  readOnly: true
- name: data
  mountPath: /var/lib/hookrelay
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/hookrelay/tls
  readOnly: true
{{- end }}
{{- end -}}
