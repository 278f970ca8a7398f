"""The version of isthmus (one place; run directories record it in config.json)."""

__version__ = "0.1.0"
