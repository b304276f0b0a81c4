"""rq-worker-service: RQ workers as first-class systemd services."""

__version__ = "0.3.0"
