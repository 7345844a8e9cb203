"""The metric names alert rules and dashboards may use: the service exports each of them
(tests/observability/test_metrics.py::test_every_metric_the_deploy_files_use_is_exported)."""

EXPORTED_METRICS = {
    "flask_http_request_duration_seconds_bucket",
    "flask_http_request_total",
    "tokenpool_unhandled_exceptions_total",
    "tokenpool_http_requests_in_progress",
    "tokenpool_activations_total",
    "tokenpool_releases_total",
    "tokenpool_token_operation_duration_seconds_bucket",
    "tokenpool_tokens_active",
    "tokenpool_tokens_available",
    "tokenpool_pool_size",
    "tokenpool_queue_length",
    "tokenpool_sweeper_runs_total",
    "tokenpool_sweeper_last_run_timestamp_seconds",
    "tokenpool_rate_limit_hits_total",
    "tokenpool_database_up",
    "tokenpool_db_query_duration_seconds_bucket",
    "tokenpool_db_pool_checked_out_connections",
}
