"""orch host agent: stdlib only, Python 3.9+, shipped to hosts as a zipapp."""
