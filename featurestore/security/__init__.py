"""Security: CurveZMQ keys of the internal sockets and the API tokens of the gateway."""
