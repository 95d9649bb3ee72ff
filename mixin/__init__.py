"""The monitoring mixin: Prometheus rules, recording rules, the PrometheusRule, Grafana
dashboards and runbooks, generated from this one Python source (node-mixin's idea, without
jsonnet). `python -m mixin` writes them; `python -m mixin --check` fails if a checked-in
file differs from what the source generates."""
