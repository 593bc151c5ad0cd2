"""ninep: a 9P2000.L file server for virtual machines."""

__version__ = "0.1.0"
