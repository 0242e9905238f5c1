"""Monitoring: Prometheus metrics, queue health rules, and the HTTP server that serves both."""
