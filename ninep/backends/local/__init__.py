"""The local back end and its security models."""

from .backend import LocalBackend, LocalNode
from .secmodel import MODEL_CHOICES, NoneModel, PassthroughModel, SecurityModel, make_model

__all__ = ["LocalBackend", "LocalNode", "SecurityModel", "PassthroughModel", "NoneModel",
           "make_model", "MODEL_CHOICES"]
