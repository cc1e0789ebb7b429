"""pytest configuration; shared helpers are in helpers.py."""
