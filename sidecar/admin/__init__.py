"""The admin listener: /metrics, /status, the dashboard and its console."""
