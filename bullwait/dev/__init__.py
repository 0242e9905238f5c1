"""Developer conveniences: an embedded redis-server and the demo traffic."""
