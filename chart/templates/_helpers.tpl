{{/*
Names and labels shared by every template. Every object is namespaced and carries
.Release.Namespace explicitly, so a rendering can be checked without a cluster.
*/}}

{{- define "bulkhead.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bulkhead.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "bulkhead.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bulkhead.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bulkhead.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "bulkhead.labels" -}}
helm.sh/chart: {{ include "bulkhead.chart" . }}
{{ include "bulkhead.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: bulkhead
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The image, by digest when one is given (the published chart always has one). */}}
{{- define "bulkhead.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* restartTargets as Kind/name, the form of --restart-target and BULKHEAD_RESTART_TARGETS. */}}
{{- define "bulkhead.restartTargets" -}}
{{- $targets := list }}
{{- range .Values.rbac.restartTargets }}
{{- $targets = append $targets (printf "%s/%s" .kind .name) }}
{{- end }}
{{- join "," $targets }}
{{- end }}
