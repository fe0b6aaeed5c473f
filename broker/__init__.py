"""The message bus: wire protocol, broker, and the direct ZeroMQ client."""
