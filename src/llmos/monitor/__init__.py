"""Monitoring: Prometheus metrics of the daemon (``metrics``)."""
