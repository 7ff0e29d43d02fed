"""The publish side: the Pusher HTTP API (Unix socket and signed TCP) and a Python client."""
