{{/* prometheus.yml: the serving pods (by annotation) and the Pushgateway (honor_labels);
firing alerts go to the Alertmanagers of `prometheus.alerting.alertmanagers`, if any. */}}
{{- define "mlplatform.prometheusConfig" -}}
global:
  scrape_interval: {{ .Values.prometheus.scrapeInterval }}
  evaluation_interval: {{ .Values.prometheus.scrapeInterval }}
  external_labels:
    platform: mlplatform
rule_files:
  - /etc/prometheus/alerts.yaml
{{- with .Values.prometheus.alerting.alertmanagers }}
alerting:
  alertmanagers:
    {{- toYaml . | nindent 4 }}
{{- end }}
scrape_configs:
  - job_name: mlplatform-serving
    kubernetes_sd_configs:
      - role: pod
        namespaces:
          names:
            - {{ .Release.Namespace }}
        selectors:
          - role: pod
            label: {{ printf "app.kubernetes.io/instance=%s,app.kubernetes.io/component=serving" .Release.Name | quote }}
    relabel_configs:
      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]
        regex: "true"
        action: keep
      - source_labels: [__meta_kubernetes_pod_phase]
        regex: Running
        action: keep
      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_path]
        regex: (.+)
        target_label: __metrics_path__
      - source_labels: [__address__, __meta_kubernetes_pod_annotation_prometheus_io_port]
        regex: ([^:]+)(?::\d+)?;(\d+)
        replacement: $1:$2
        target_label: __address__
      - source_labels: [__meta_kubernetes_namespace]
        target_label: namespace
      # the release, as the reporter and retrainer push it: the dashboards and rules group by it
      - source_labels: [__meta_kubernetes_pod_label_app_kubernetes_io_instance]
        target_label: release
      - source_labels: [__meta_kubernetes_pod_name]
        target_label: pod
{{- with include "mlplatform.pushgatewayUrl" . }}
  - job_name: pushgateway
    # Keep the job, instance, release and namespace labels the reporter and retrainer pushed
    # with (their grouping key), not the Pushgateway's own.
    honor_labels: true
    static_configs:
      - targets:
          - {{ . | trimPrefix "http://" | trimPrefix "https://" | trimSuffix "/" | quote }}
{{- end }}
{{- end }}


{{- /*
The alert rules (files/prometheus/alerts.yaml, promtool-tested), each alert with a runbook_url
annotation: `alertRules.runbookBaseUrl` + "#" + the alert's name in lower case (the heading
anchors of docs/runbooks.md). The bundled Prometheus and the PrometheusRule both load this.
*/}}
{{- define "mlplatform.alertRules" -}}
{{- $base := .Values.alertRules.runbookBaseUrl }}
{{- $groups := list }}
{{- range $group := (.Files.Get "files/prometheus/alerts.yaml" | fromYaml).groups }}
{{- $rules := list }}
{{- range $rule := $group.rules }}
{{- if $rule.alert }}
{{- $annotations := merge (dict "runbook_url" (printf "%s#%s" $base (lower $rule.alert))) (deepCopy ($rule.annotations | default dict)) }}
{{- $rule = merge (dict "annotations" $annotations) (deepCopy $rule) }}
{{- end }}
{{- $rules = append $rules $rule }}
{{- end }}
{{- $groups = append $groups (merge (dict "rules" $rules) (deepCopy $group)) }}
{{- end }}
{{- toYaml (dict "groups" $groups) }}
{{- end }}
