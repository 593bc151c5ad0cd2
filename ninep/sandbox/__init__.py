"""Confinement of the server process itself (issue 13), one module per layer:
network exposure (network.py), and the command-line group (options.py)."""
