"""Experiments built from the library: each returns a result that serialises to JSON."""
