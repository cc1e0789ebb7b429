"""Bounds of a network's outputs over an input box: specification matrices, auto_LiRPA wrapper, fused IBP."""
