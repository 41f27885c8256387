"""gateway: the fleet's single entry point: forward-auth, routing by path prefix, streaming proxy."""
