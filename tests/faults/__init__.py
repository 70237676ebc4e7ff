"""Fault scenarios: real consumer processes, RabbitMQ and PostgreSQL, broken on purpose."""
