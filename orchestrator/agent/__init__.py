"""The host agent seen from the control machine: its zipapp bundle, its client, its install."""
