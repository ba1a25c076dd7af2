"""Pretext methods: the ``Method`` contract (``base``) and one module per colorization
system; importing this package registers them all."""
from pretext.methods import zhang  # noqa: F401  (registration)
from pretext.methods import dahl, larsson  # noqa: F401  (registration; share methods/hypercolumn.py)
from pretext.methods import lal_wgan  # noqa: F401  (registration)
from pretext.methods import iizuka, liang_patch  # noqa: F401  (registration)
from pretext.methods import pixcolor  # noqa: F401  (registration; its PixelCNN: methods/pixelcnn.py)
from pretext.methods import royer  # noqa: F401  (registration; its PixelCNN: methods/pixelcnn.py)
from pretext.methods.base import (Method, StepContext, ValidationOutput, build_method, list_methods, load_method,
                                  method_payload, register_method)

__all__ = ["Method", "StepContext", "ValidationOutput", "build_method", "list_methods", "load_method",
           "method_payload", "register_method"]
