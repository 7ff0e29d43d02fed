"""Sans-IO: Pusher messages, WebSocket frames, HTTP heads, signatures, channel rules."""
