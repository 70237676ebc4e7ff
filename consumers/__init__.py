"""The consumer: deliveries from RabbitMQ folded into async_status rows."""
