"""vhuman: turn a pretrained StyleGAN into an attribute-controllable virtual-human face generator."""

__version__ = "0.1.0"
