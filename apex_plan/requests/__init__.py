"""Requests: what `simulate` and `search` are asked, as frozen dataclasses built from a plain mapping
(CLI options or a sweep scenario), checked once, and run by plain functions that return typed
outcomes; the CLI only parses, builds, calls and prints."""
