"""The HTTP API: Tornado handlers that check keys and hand requests to the broker."""
