"""Head-free encoder trunks: the registry and one module per family (importing them
registers ``alexnet_cc``, ``vgg_cc``, ``resnet50_cc``)."""
from pretext.encoders import alexnet, resnet, vgg  # noqa: F401  (registration)
from pretext.encoders import iizuka, liang  # noqa: F401  (registration: iizuka_cc, liang_cc)
from pretext.encoders.registry import ColorEncoder, build_encoder, list_encoders, normalize_l, register_encoder

__all__ = ["ColorEncoder", "build_encoder", "list_encoders", "normalize_l", "register_encoder"]
