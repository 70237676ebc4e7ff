"""async_status tracker: job lifecycle events from RabbitMQ, served as Traffic Ops async_status."""
