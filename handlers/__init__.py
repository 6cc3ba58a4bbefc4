"""Tornado RequestHandlers only: parse and validate, call a service, write JSON or SSE."""
