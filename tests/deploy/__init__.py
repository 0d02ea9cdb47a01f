"""Deployment tests: certificates, site.toml, bad input, real SuperLink/SuperNodes on loopback."""
