{{/* prometheus.yml: the serving pods (by annotation) and the Pushgateway (honor_labels). */}}
{{- define "mlplatform.prometheusConfig" -}}
global:
  scrape_interval: {{ .Values.prometheus.scrapeInterval }}
  evaluation_interval: {{ .Values.prometheus.scrapeInterval }}
  external_labels:
    platform: mlplatform
rule_files:
  - /etc/prometheus/alerts.yaml
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
      - source_labels: [__meta_kubernetes_pod_name]
        target_label: pod
{{- with include "mlplatform.pushgatewayUrl" . }}
  - job_name: pushgateway
    # Keep the job/instance labels the reporter and retrainer pushed with.
    honor_labels: true
    static_configs:
      - targets:
          - {{ . | trimPrefix "http://" | trimPrefix "https://" | trimSuffix "/" | quote }}
{{- end }}
{{- end }}
