"""mtrl_famo: multitask SAC on Metaworld with pluggable loss/gradient balancers."""

__version__ = "0.1.0"
