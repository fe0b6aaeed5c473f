"""Request handlers; the route table that uses them is in ``frontend.app``."""
