"""Developer conveniences: an embedded redis-server, a fake WhatsApp Cloud API on loopback, and
the demo traffic."""
