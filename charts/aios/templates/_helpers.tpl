{{/* The name of the release's objects. */}}
{{- define "aios.fullname" -}}
{{- if contains "aios" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-aios" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "aios.operatorName" -}}
{{- printf "%s-operator" (include "aios.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object of the release. */}}
{{- define "aios.labels" -}}
app.kubernetes.io/part-of: aios
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "aios.operatorSelector" -}}
app.kubernetes.io/name: aios-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "aios.tag" -}}
{{- .Values.image.tag | default .Chart.AppVersion -}}
{{- end -}}

{{- define "aios.operatorImage" -}}
{{- printf "%s/aios-operator:%s" .Values.image.registry (include "aios.tag" .) -}}
{{- end -}}

{{- define "aios.agentImage" -}}
{{- .Values.agents.image | default (printf "%s/aios-agent:%s" .Values.image.registry (include "aios.tag" .)) -}}
{{- end -}}

{{/* The Secret with the connection settings: an existing one, or the chart's. */}}
{{- define "aios.connectionSecret" -}}
{{- .Values.connection.existingSecret | default .Values.connection.secretName -}}
{{- end -}}

{{/* The bundled RabbitMQ's password: the value, else the one already installed, else new. */}}
{{- define "aios.rabbitmqPassword" -}}
{{- if .Values.rabbitmq.password -}}
{{- .Values.rabbitmq.password -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (printf "%s-rabbitmq" (include "aios.fullname" .)) -}}
{{- if and $existing $existing.data (index $existing.data "password") -}}
{{- index $existing.data "password" | b64dec -}}
{{- else -}}
{{- randAlphaNum 32 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The restricted security context of every container the chart runs. */}}
{{- define "aios.containerSecurityContext" -}}
runAsNonRoot: true
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: ["ALL"]
{{- end -}}
