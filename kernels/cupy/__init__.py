"""CuPy (CUDA C, compiled at run time by NVRTC) kernels; each module names its reference function.

Importing this package does not import cupy; the kernel modules do, on first use.
"""
