"""The HTTP API: a Falcon app serving Traffic Ops' async_status endpoints under gunicorn."""
