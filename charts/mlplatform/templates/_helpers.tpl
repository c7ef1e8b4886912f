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

{{/*
An image reference with `global.imageRegistry` applied: the registry host of `ref` (its first
part when that has a dot or a colon, or is localhost) is replaced, or prefixed when it has none.
(list $ "docker.io/prom/prometheus:v3.5.0")
*/}}
{{- define "mlplatform.imageRef" -}}
{{- $root := index . 0 }}
{{- $ref := index . 1 }}
{{- $registry := trimSuffix "/" ((($root.Values.global | default dict).imageRegistry) | default "") }}
{{- if $registry }}
{{- $parts := splitList "/" $ref }}
{{- $first := first $parts }}
{{- if and (gt (len $parts) 1) (or (contains "." $first) (contains ":" $first) (eq $first "localhost")) }}
{{- $ref = join "/" (rest $parts) }}
{{- end }}
{{- $ref = printf "%s/%s" $registry $ref }}
{{- end }}
{{- $ref }}
{{- end }}

{{/* One of our images: (list $ .Values.serving.repository); the tag defaults to appVersion. */}}
{{- define "mlplatform.image" -}}
{{- $root := index . 0 }}
{{- $tag := default $root.Chart.AppVersion $root.Values.image.tag }}
{{- if eq $tag "latest" }}{{ fail "image.tag: never use latest, pin a version" }}{{ end }}
{{- include "mlplatform.imageRef" (list $root (printf "%s%s:%s" $root.Values.image.registry (index . 1) $tag)) }}
{{- end }}

{{/* A bundled image (SeaweedFS, Prometheus, ...): (list $ .Values.prometheus.image) */}}
{{- define "mlplatform.bundledImage" -}}
{{- $image := index . 1 }}
{{- include "mlplatform.imageRef" (list (index . 0) (printf "%s:%s" $image.repository $image.tag)) }}
{{- end }}

{{/* imagePullSecrets of every pod: `global.imagePullSecrets` then `image.pullSecrets`. */}}
{{- define "mlplatform.imagePullSecrets" -}}
{{- $secrets := concat (((.Values.global | default dict).imagePullSecrets) | default list) .Values.image.pullSecrets | uniq }}
{{- with $secrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Pod template metadata of one component: its selector labels plus `podLabels` (which never
override a selector label), the chart's annotations plus `podAnnotations`.
(dict "ctx" $ "component" "serving" "values" .Values.serving "annotations" (dict ...))
*/}}
{{- define "mlplatform.podMetadata" -}}
{{- $selector := include "mlplatform.componentSelectorLabels" (list .ctx .component) | fromYaml }}
labels:
  {{- toYaml (merge $selector (.values.podLabels | default dict)) | nindent 2 }}
{{- with merge (dict) (.annotations | default dict) (.values.podAnnotations | default dict) }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
The podFailurePolicy of every Job our commands run in (needs restartPolicy: Never): exit code
2 is a refusal a retry cannot change (mlplatform_common.errors.exit_code), so the Job fails at
once instead of running backoffLimit more pods that fail the same way; a pod evicted by a node
drain or preemption is not the Job's failure and is not counted. The container's name.
*/}}
{{- define "mlplatform.podFailurePolicy" -}}
podFailurePolicy:
  rules:
    - action: FailJob
      onExitCodes:
        containerName: {{ . }}
        operator: In
        values: [2]
    - action: Ignore
      onPodConditions:
        - type: DisruptionTarget
          status: "True"
{{- end }}

{{/*
Where a component's pods run: pull secrets, priorityClassName, nodeSelector, affinity,
tolerations, topologySpreadConstraints (a constraint without a labelSelector gets the
component's pods; `defaultSpread` is used when the values give none).
(dict "ctx" $ "component" "serving" "values" .Values.serving "defaultSpread" (list ...))
*/}}
{{- define "mlplatform.podScheduling" -}}
{{- include "mlplatform.imagePullSecrets" .ctx }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $selector := include "mlplatform.componentSelectorLabels" (list .ctx .component) | fromYaml }}
{{- $spread := list }}
{{- range (.values.topologySpreadConstraints | default .defaultSpread) }}
{{- $spread = append $spread (merge (deepCopy .) (dict "labelSelector" (dict "matchLabels" $selector))) }}
{{- end }}
{{- with $spread }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
A container's env and envFrom: the chart's variables (YAML text), where an `extraEnv` entry of
the same name replaces the chart's (no duplicate names: server-side apply refuses them), then
the other `extraEnv` entries, and `extraEnvFrom`.
(dict "env" (include ...) "values" .Values.serving)
*/}}
{{- define "mlplatform.env" -}}
{{- $extra := .values.extraEnv | default list }}
{{- $names := dict }}
{{- range $extra }}{{ $_ := set $names .name true }}{{ end }}
{{- $env := list }}
{{- range (.env | default "" | fromYamlArray) }}
{{- if not (kindIs "map" .) }}{{ fail (printf "the chart's env is not a YAML list: %v" .) }}{{ end }}
{{- if not (hasKey $names .name) }}{{ $env = append $env . }}{{ end }}
{{- end }}
{{- with concat $env $extra }}
env:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.extraEnvFrom }}
envFrom:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* A component's data volume: its PVC when persistence is on, else a sized emptyDir.
(dict "ctx" $ "component" "grafana" "persistence" .Values.grafana.persistence "sizeLimit" "512Mi") */}}
{{- define "mlplatform.dataVolume" -}}
- name: data
  {{- if .persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "mlplatform.componentName" (list .ctx .component) }}
  {{- else }}
  emptyDir:
    sizeLimit: {{ .sizeLimit }}
  {{- end }}
{{- end }}

{{/* The PVC of a component's data, when persistence is on (same dict as dataVolume). */}}
{{- define "mlplatform.dataClaim" -}}
{{- if .persistence.enabled }}
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: {{ include "mlplatform.componentName" (list .ctx .component) }}
  labels:
    {{- include "mlplatform.componentLabels" (list .ctx .component) | nindent 4 }}
spec:
  accessModes: ["ReadWriteOnce"]
  {{- with .persistence.storageClass }}
  storageClassName: {{ . }}
  {{- end }}
  resources:
    requests:
      storage: {{ .persistence.size }}
{{- end }}
{{- end }}

{{/* Name of a component's service account: (list $ "serving" .Values.serving) */}}
{{- define "mlplatform.serviceAccountName" -}}
{{- $sa := (index . 2).serviceAccount | default dict }}
{{- if or $sa.create (not (hasKey $sa "create")) }}
{{- default (include "mlplatform.componentName" (list (index . 0) (index . 1))) $sa.name }}
{{- else }}
{{- default "default" $sa.name }}
{{- end }}
{{- end }}

{{/*
A component's ServiceAccount when `serviceAccount.create`; its annotations are
`serviceAccount.annotations` over, for the pods that use the store, `store.serviceAccountAnnotations`.
(dict "ctx" $ "component" "serving" "values" .Values.serving "store" true)
*/}}
{{- define "mlplatform.serviceAccount" -}}
{{- $sa := .values.serviceAccount | default dict }}
{{- if or $sa.create (not (hasKey $sa "create")) }}
{{- $annotations := deepCopy ($sa.annotations | default dict) }}
{{- if .store }}{{ $annotations = merge $annotations .ctx.Values.store.serviceAccountAnnotations }}{{ end }}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "mlplatform.serviceAccountName" (list .ctx .component .values) }}
  labels:
    {{- include "mlplatform.componentLabels" (list .ctx .component) | nindent 4 }}
  {{- with $annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
automountServiceAccountToken: false  # mounted only where the pod spec asks for it
{{- end }}
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

{{- define "mlplatform.grafanaSecret" -}}
{{- default (include "mlplatform.componentName" (list . "grafana")) .Values.grafana.existingSecret }}
{{- end }}

{{/*
A generated secret value, created once and kept: the value already in the cluster (lookup), else
a new random one, but only where a new one cannot replace a kept one unseen:
- `lookup` must reach the cluster (the release namespace is found). `helm template` and Argo CD
  render without one: a random value there would differ at every render, and a new signing key
  fails every stored model's verification, so the render fails and names the setting to use.
- `keep`: never generated on an upgrade (the Secret should be there: someone deleted it, or the
  release used an existing Secret before).
A lint (neither install nor upgrade) is never applied: it gets a random value.
(dict "ctx" $ "name" <secret> "key" <key> "length" <n> "setting" <values key> "keep" <bool>)
*/}}
{{- define "mlplatform.secretValue" -}}
{{- $release := .ctx.Release }}
{{- $existing := lookup "v1" "Secret" $release.Namespace .name }}
{{- if and $existing (hasKey (default dict $existing.data) .key) }}
{{- index $existing.data .key }}
{{- else }}
{{- $deploying := or $release.IsInstall $release.IsUpgrade }}
{{- if and $deploying (not $existing) (not (lookup "v1" "Namespace" "" $release.Namespace)) }}
{{- fail (printf "Secret %s: no cluster to read it from (helm template, Argo CD), and a value generated here would change at every render: create it once and set %s, or helm install against the cluster (into an existing namespace)" .name .setting) }}
{{- end }}
{{- if and $release.IsUpgrade (not $existing) .keep }}
{{- fail (printf "Secret %s is missing on an upgrade: restore it or set %s (a new signing key would fail every stored model's verification)" .name .setting) }}
{{- end }}
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

{{- /* The jobs' release and namespace: in their Pushgateway grouping key, so releases sharing
one Pushgateway keep their own series. */}}
{{- define "mlplatform.pushLabelsEnv" }}
- name: MLPLATFORM_RELEASE
  value: {{ .Release.Name | quote }}
- name: MLPLATFORM_NAMESPACE
  value: {{ .Release.Namespace | quote }}
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
{{- /* The named model every component of the release works on (keys.model_root). */}}
{{- define "mlplatform.modelEnv" -}}
- name: MLPLATFORM_MODEL_NAME
  value: {{ .Values.config.modelName | quote }}
{{- end }}

{{- define "mlplatform.storeEnv" -}}
{{ include "mlplatform.modelEnv" . }}
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

{{/* How a model is trained: the retrainer's and the bootstrap's first model alike. */}}
{{- define "mlplatform.trainingEnv" -}}
- name: MLPLATFORM_TASK
  value: {{ .Values.retrainer.task | quote }}
- name: MLPLATFORM_ESTIMATOR
  value: {{ .Values.retrainer.estimator | quote }}
- name: MLPLATFORM_N_COMPONENTS
  value: {{ .Values.retrainer.nComponents | quote }}
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

{{/* The key of the endpoints that write training data (/feedback): serving checks it, the web
app sends it. */}}
{{- define "mlplatform.writerTokenEnv" -}}
- name: MLPLATFORM_WRITER_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "mlplatform.authSecret" . }}
      key: writer-token
{{- end }}

{{/* Our images write nothing outside /tmp; HOME points there for libraries that cache. */}}
{{- define "mlplatform.tmpEnv" -}}
- name: HOME
  value: /tmp
{{- end }}
