"""Compiled C++ for the torch backend on CPU tensors (built once with the system compiler, loaded
with ctypes; build.py says how). When a library is unavailable (philox's functions return None;
group_norm_silu.applies is False) the torch backend runs its pure-torch code: the same numbers
for the noise stream, bit for bit; the same within float32 tolerance for group_norm_silu.

philox.py / philox.cpp                     the noise stream (reference.noise): words, normals,
                                           q_sample's noising
group_norm_silu.py / group_norm_silu.cpp   GroupNorm+SiLU forward and backward, float32, NCHW and
                                           channels_last (reference.group_norm_silu)
"""
