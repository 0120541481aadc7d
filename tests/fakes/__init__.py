"""Fake upstream providers: real HTTP servers on loopback, speaking each provider's wire format."""
