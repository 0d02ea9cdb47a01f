"""Shared test helpers: message builders (`messages`), event waits and load-scaled timeouts (`waiting`)."""
