{{/* The objects' name: the release's, with "syncd" in it. */}}
{{- define "syncd.fullname" -}}
{{- if contains "syncd" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-syncd" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* This install's identity unless the config or ownerId names one: unique per release
     (namespace and name), a valid owner id (lowercase, at most 63). */}}
{{- define "syncd.defaultOwnerId" -}}
{{- printf "%s-%s" .Release.Namespace .Release.Name | lower | replace "_" "-" | trunc 63 | trimSuffix "-" | trimSuffix "." -}}
{{- end -}}

{{- define "syncd.labels" -}}
app.kubernetes.io/name: syncd
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "syncd.selector" -}}
app.kubernetes.io/name: syncd
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The config file: the value given, or files/config.yaml (deploy/'s example). */}}
{{- define "syncd.config" -}}
{{- .Values.config | default (.Files.Get "files/config.yaml") -}}
{{- end -}}

{{- define "syncd.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The container both workloads run; "args" is passed in. */}}
{{- define "syncd.container" -}}
- name: syncd
  image: {{ include "syncd.image" .root | quote }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  args:
    {{- toYaml .args | nindent 4 }}
    - --log-level={{ .root.Values.logLevel }}
    - --log-format={{ .root.Values.logFormat }}
    {{- with .root.Values.namespaces }}
    - --namespaces={{ join "," . }}
    {{- end }}
    {{- if .root.Values.externalServices.enabled }}
    - --resources
    {{- end }}
  env:
    - name: POD_NAMESPACE
      valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
    {{- if .root.Values.ownerId }}
    - name: SYNCD_OWNER_ID        # beats the config's owner_id
      value: {{ .root.Values.ownerId | quote }}
    {{- else }}
    - name: SYNCD_DEFAULT_OWNER_ID  # used when the config sets no owner_id
      value: {{ include "syncd.defaultOwnerId" .root | quote }}
    {{- end }}
    - name: HOST_IP
      valueFrom: {fieldRef: {fieldPath: status.hostIP}}
    {{- if .root.Values.consul.enabled }}
    - name: CONSUL_HTTP_ADDR
      value: {{ .root.Values.consul.address | quote }}
    - name: CONSUL_HTTP_TOKEN_FILE
      value: /etc/consul/token
    {{- if .root.Values.consul.caFile }}
    - name: CONSUL_CACERT
      value: /etc/consul/ca.pem
    {{- end }}
    {{- end }}
  resources:
    {{- toYaml .root.Values.resources | nindent 4 }}
  securityContext:
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities: {drop: ["ALL"]}
  volumeMounts:
    - {name: config, mountPath: /etc/syncd, readOnly: true}
    {{- if .root.Values.consul.enabled }}
    - {name: consul, mountPath: /etc/consul, readOnly: true}
    {{- end }}
{{- end -}}

{{- define "syncd.volumes" -}}
- name: config
  configMap: {name: {{ include "syncd.fullname" . }}-config}
{{- if .Values.consul.enabled }}
- name: consul
  secret: {secretName: {{ .Values.consul.secretName }}}
{{- end }}
{{- end -}}

{{- define "syncd.podSpec" -}}
serviceAccountName: {{ include "syncd.fullname" . }}
securityContext:
  runAsNonRoot: true
  seccompProfile: {type: RuntimeDefault}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
