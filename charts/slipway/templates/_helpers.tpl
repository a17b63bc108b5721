{{/* Names, labels and the checks every render runs. */}}

{{- define "slipway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "slipway.fullname" -}}
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

{{- define "slipway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "slipway.labels" -}}
helm.sh/chart: {{ include "slipway.chart" . }}
{{ include "slipway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "slipway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "slipway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "slipway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "slipway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "slipway.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* True (non-empty) when the database is PostgreSQL rather than SQLite in the data dir. */}}
{{- define "slipway.externalDatabase" -}}
{{- if or .Values.database.url .Values.database.existingSecret }}true{{- end }}
{{- end }}

{{/* The data dir lives on a PVC only with one replica; several replicas each get an
emptyDir (their state is in PostgreSQL). */}}
{{- define "slipway.usePVC" -}}
{{- if and .Values.persistence.enabled (le (int .Values.replicaCount) 1) }}true{{- end }}
{{- end }}

{{- define "slipway.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not (include "slipway.externalDatabase" .)) }}
{{- fail (printf "replicaCount=%d needs PostgreSQL: SQLite in the data dir allows one replica only. Set database.url (or database.existingSecret) to a postgresql:// URL, or replicaCount=1." (int .Values.replicaCount)) }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.existingSecret) }}
{{- fail (printf "replicaCount=%d needs existingSecret: the replicas must share the encryption key and admin token (keys %s and %s), which one replica would otherwise generate into its own data dir." (int .Values.replicaCount) .Values.existingSecretKeys.encryptionKey .Values.existingSecretKeys.adminToken) }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (eq .Values.runtime "local") }}
{{- fail (printf "replicaCount=%d needs runtime=kubernetes: with the local runtime, workers and built versions live in the data dir of the replica that built them, which the other replicas cannot reach." (int .Values.replicaCount)) }}
{{- end }}
{{- if and .Values.database.url (not (regexMatch "^postgres(ql)?(\\+[a-z0-9]+)?://" .Values.database.url)) }}
{{- fail "database.url must be a postgresql:// URL (leave it empty for SQLite in the data dir)" }}
{{- end }}
{{- end }}
