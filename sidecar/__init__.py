"""Sidecar: a Pusher-protocol real-time relay that runs beside a web app."""

__version__ = "0.1.0"
