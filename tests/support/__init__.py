"""Shared test machinery: real servers on loopback, real TLS, a fake clock."""
