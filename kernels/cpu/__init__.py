"""Compiled C++ for the torch backend on CPU tensors (built once with the system compiler, loaded
with ctypes; build.py says how). Each function returns None when the library is unavailable,
and the torch backend then runs its pure-torch code, which gives the same numbers.

philox.py / philox.cpp   the noise stream (reference.noise): words, normals, q_sample's noising
"""
