"""Prometheus metric names, shared by serving, jobs, rules and dashboards (docs/architecture.md,
"Metric names").

Prefix ``mlplatform_``, base units, ``_total`` on counters (prometheus-client adds it to a
Counter's name), bounded labels only.
"""

from __future__ import annotations

PREFIX = "mlplatform_"

# serving
HTTP_REQUESTS = "mlplatform_http_requests"  # Counter -> mlplatform_http_requests_total
HTTP_REQUEST_DURATION = "mlplatform_http_request_duration_seconds"  # Histogram
PREDICTIONS = "mlplatform_predictions"  # Counter{model_version,label}
PREDICTION_PROBABILITY = "mlplatform_prediction_probability"  # Histogram
PREDICTION_VALUE = "mlplatform_prediction_value"  # Histogram: a regression's values
FEEDBACK = "mlplatform_feedback"  # Counter
MODEL_INFO = "mlplatform_model_info"  # Gauge{version} = 1
MODEL_LOAD_SECONDS = "mlplatform_model_load_seconds"  # Gauge
MODEL_ALIAS_MISMATCH = "mlplatform_model_alias_mismatch"  # Gauge: 1 = alias names another version
PREDICTION_LOG_DROPPED = "mlplatform_prediction_log_dropped_rows"  # Counter
PREDICTION_LOG_WAIT = "mlplatform_prediction_log_wait_seconds"  # Histogram (its _count: waits)
PREDICTION_LOG_WAIT_LIMIT = "mlplatform_prediction_log_wait_limit_reached"  # Counter
BACKUP_PREDICTIONS = "mlplatform_backup_predictions"  # Counter
UNKNOWN_CATEGORIES = "mlplatform_unknown_categories"  # Counter{feature}: values never trained on

# Routes of probes and scrapes (a regex over the `route` label, as PromQL anchors it): the SLIs
# of the alert rules and dashboards leave them out, as they are not users' requests.
PROBE_AND_SCRAPE_ROUTES = "/metrics|.*/health(/.*)?|.*/ready|.*/live"

# reporter (pushed to the Pushgateway); every series but the success time has a `task` label
# (classification or regression), the quality gauges are one name per metric
DRIFT_SHARE = "mlplatform_drift_share"
DRIFTED_COLUMNS = "mlplatform_drifted_columns"
FEATURE_DRIFT_SCORE = "mlplatform_feature_drift_score"  # {feature, space}
MODEL_F1 = "mlplatform_model_f1"
MODEL_PRECISION = "mlplatform_model_precision"
MODEL_RECALL = "mlplatform_model_recall"
MODEL_ACCURACY = "mlplatform_model_accuracy"
MODEL_BALANCED_ACCURACY = "mlplatform_model_balanced_accuracy"
MODEL_ROC_AUC = "mlplatform_model_roc_auc"
MODEL_MAE = "mlplatform_model_mae"  # regression, in the target's units
MODEL_RMSE = "mlplatform_model_rmse"
MODEL_R2 = "mlplatform_model_r2"
MODEL_MAPE = "mlplatform_model_mape"  # a fraction
REPORT_ROWS = "mlplatform_report_rows"  # {dataset}
REPORT_LAST_SUCCESS = "mlplatform_report_last_success_timestamp_seconds"

# retrainer (pushed to the Pushgateway)
RETRAIN_RUNS = "mlplatform_retrain_runs"  # Counter{outcome} -> _total
RETRAIN_LAST_SUCCESS = "mlplatform_retrain_last_success_timestamp_seconds"
MODEL_VERSION_NUMBER = "mlplatform_model_version_number"

# Pushgateway job names (the rest of the grouping key: CommonSettings.push_grouping_key)
REPORTER_JOB = "mlplatform-reporter"
RETRAINER_JOB = "mlplatform-retrainer"
