{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "mlplatform.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, with the chart name unless the release name contains it. */}}
{{- define "mlplatform.fullname" -}}
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

{{/* chart label: name-version */}}
{{- define "mlplatform.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "mlplatform.labels" -}}
helm.sh/chart: {{ include "mlplatform.chart" . }}
{{ include "mlplatform.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mlplatform
{{- end }}

{{/* Labels that select the release's pods. */}}
{{- define "mlplatform.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mlplatform.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component: include "mlplatform.componentLabels" (list $ "serving") */}}
{{- define "mlplatform.componentLabels" -}}
{{ include "mlplatform.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Selector labels of one component: (list $ "serving") */}}
{{- define "mlplatform.componentSelectorLabels" -}}
{{ include "mlplatform.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Name of one component's objects: (list $ "serving") -> <fullname>-serving */}}
{{- define "mlplatform.componentName" -}}
{{- printf "%s-%s" (include "mlplatform.fullname" (index . 0)) (index . 1) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* One of our images: (list $ .Values.serving.repository); the tag defaults to appVersion. */}}
{{- define "mlplatform.image" -}}
{{- $root := index . 0 }}
{{- $tag := default $root.Chart.AppVersion $root.Values.image.tag }}
{{- if eq $tag "latest" }}{{ fail "image.tag: never use latest, pin a version" }}{{ end }}
{{- printf "%s%s:%s" $root.Values.image.registry (index . 1) $tag }}
{{- end }}

{{/* Pod-level security context of a pod running as `uid` (list uid). */}}
{{- define "mlplatform.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
fsGroup: {{ . }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container-level security context (every container of the chart). */}}
{{- define "mlplatform.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Names of the Secrets. */}}
{{- define "mlplatform.authSecret" -}}
{{- default (include "mlplatform.componentName" (list . "auth")) .Values.auth.existingSecret }}
{{- end }}
{{- define "mlplatform.storeSecret" -}}
{{- default (include "mlplatform.componentName" (list . "store")) .Values.store.existingSecret }}
{{- end }}

{{/*
A generated secret value that survives upgrades: the value already in the cluster if there is
one (lookup), else a new random one. (dict "ctx" $ "name" <secret> "key" <key> "length" <n>)
*/}}
{{- define "mlplatform.secretValue" -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .name }}
{{- if and $existing (hasKey (default dict $existing.data) .key) }}
{{- index $existing.data .key }}
{{- else }}
{{- randAlphaNum (int .length) | b64enc }}
{{- end }}
{{- end }}

{{/* Service addresses, bundled or external. */}}
{{- define "mlplatform.s3Endpoint" -}}
{{- if .Values.seaweedfs.enabled }}
{{- printf "%s:%d" (include "mlplatform.componentName" (list . "seaweedfs")) (int .Values.seaweedfs.port) }}
{{- else }}
{{- required "store.externalEndpoint is required when seaweedfs.enabled is false" .Values.store.externalEndpoint }}
{{- end }}
{{- end }}

{{- define "mlplatform.pushgatewayUrl" -}}
{{- if .Values.pushgateway.enabled }}
{{- printf "%s:%d" (include "mlplatform.componentName" (list . "pushgateway")) (int .Values.pushgateway.port) }}
{{- else }}
{{- .Values.pushgateway.url }}
{{- end }}
{{- end }}

{{- define "mlplatform.prometheusUrl" -}}
{{- if .Values.prometheus.enabled }}
{{- printf "http://%s:%d" (include "mlplatform.componentName" (list . "prometheus")) (int .Values.prometheus.port) }}
{{- else }}
{{- .Values.prometheus.url }}
{{- end }}
{{- end }}

{{- define "mlplatform.grafanaUrl" -}}
{{- if .Values.grafana.enabled }}
{{- printf "%s/" (trimSuffix "/" .Values.grafana.path) }}
{{- else }}
{{- .Values.grafana.url }}
{{- end }}
{{- end }}

{{- define "mlplatform.servingUrl" -}}
{{- printf "http://%s:%d" (include "mlplatform.componentName" (list . "serving")) (int .Values.serving.port) }}
{{- end }}

{{/* Environment shared by every component that reads the store (CommonSettings). */}}
{{- define "mlplatform.storeEnv" -}}
- name: MLPLATFORM_STORE_URL
  value: {{ printf "s3://%s" .Values.store.bucket | quote }}
- name: MLPLATFORM_S3_ENDPOINT
  value: {{ include "mlplatform.s3Endpoint" . | quote }}
- name: MLPLATFORM_S3_SECURE
  value: {{ .Values.store.secure | quote }}
{{- /* Without keys the services take the AWS credential chain (IRSA, instance profile). */}}
{{- if or .Values.seaweedfs.enabled (not .Values.store.credentialChain) }}
- name: MLPLATFORM_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "mlplatform.storeSecret" . }}
      key: access-key
- name: MLPLATFORM_S3_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "mlplatform.storeSecret" . }}
      key: secret-key
{{- end }}
- name: MLPLATFORM_SIGNING_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "mlplatform.authSecret" . }}
      key: signing-key
{{ include "mlplatform.logEnv" . }}
{{- end }}

{{- define "mlplatform.logEnv" -}}
- name: MLPLATFORM_LOG_LEVEL
  value: {{ .Values.config.logLevel | quote }}
- name: MLPLATFORM_LOG_FORMAT
  value: {{ .Values.config.logFormat | quote }}
{{- end }}

{{- define "mlplatform.adminTokenEnv" -}}
- name: MLPLATFORM_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "mlplatform.authSecret" . }}
      key: admin-token
{{- end }}

{{/* Our images write nothing outside /tmp; HOME points there for libraries that cache. */}}
{{- define "mlplatform.tmpEnv" -}}
- name: HOME
  value: /tmp
{{- end }}

{{/* Annotations of the service accounts of the pods that use the store (IRSA's role-arn). */}}
{{- define "mlplatform.storeServiceAccountAnnotations" -}}
{{- with .Values.store.serviceAccountAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
