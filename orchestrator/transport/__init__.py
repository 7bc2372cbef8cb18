"""Reaching hosts: SSH connections (strict host keys), bounded fan-out, and blob shipping."""
