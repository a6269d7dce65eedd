"""Numerics of compact weight storage (fp8 with a per-tensor scale, GGUF block quantisation), in torch.

A leaf below both the models (whose block linears decode stored weights) and the weights layer (which
quantises while loading or writing): pure tensor math, no files.
"""
