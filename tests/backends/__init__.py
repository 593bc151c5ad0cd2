"""The shared back-end suite (see conftest.py for the registry of back ends)."""
