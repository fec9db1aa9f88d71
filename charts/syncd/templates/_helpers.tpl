{{/* The objects' name: fullnameOverride, else the release's with "syncd" (or
     nameOverride) in it. */}}
{{- define "syncd.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := .Values.nameOverride | default "syncd" -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "syncd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "syncd.fullname" .) -}}
{{- else -}}
{{- required "serviceAccount.name: the ServiceAccount to use when serviceAccount.create is false" .Values.serviceAccount.name -}}
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

{{/* The config file: the value given; with ExternalServices alone, one with no targets.
     There is no default target: an install must not point Services anywhere by itself. */}}
{{- define "syncd.config" -}}
{{- if .Values.config -}}
{{- .Values.config -}}
{{- else if .Values.externalServices.enabled -}}
# Written by the chart: no targets of its own; ExternalServices declare them.
version: 1
{{- else -}}
{{- fail "config: give syncd's config file (--set-file config=my-config.yaml; docs/configuration.md), or set externalServices.enabled=true to run on ExternalServices alone" -}}
{{- end -}}
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
    {{- with .root.Values.extraArgs }}
    {{- toYaml . | nindent 4 }}
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
    {{- with .root.Values.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .root.Values.envFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  resources:
    {{- toYaml .root.Values.resources | nindent 4 }}
  securityContext:
    {{- $defaults := dict "allowPrivilegeEscalation" false "readOnlyRootFilesystem" true "capabilities" (dict "drop" (list "ALL")) }}
    {{- toYaml (merge (deepCopy .root.Values.containerSecurityContext) $defaults) | nindent 4 }}
  volumeMounts:
    - {name: config, mountPath: /etc/syncd, readOnly: true}
    {{- if .root.Values.consul.enabled }}
    - {name: consul, mountPath: /etc/consul, readOnly: true}
    {{- end }}
    {{- with .root.Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{- define "syncd.volumes" -}}
- name: config
  configMap: {name: {{ include "syncd.fullname" . }}-config}
{{- if .Values.consul.enabled }}
- name: consul
  secret: {secretName: {{ .Values.consul.secretName }}}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "syncd.podSpec" -}}
serviceAccountName: {{ include "syncd.serviceAccountName" . }}
securityContext:
  {{- $defaults := dict "runAsNonRoot" true "seccompProfile" (dict "type" "RuntimeDefault") }}
  {{- toYaml (merge (deepCopy .Values.podSecurityContext) $defaults) | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
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
