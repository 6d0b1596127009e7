"""Portable, bit-exact inference for BytesGPT: integer frequencies that are a pure function of the weights.

``model.py`` states the arithmetic (rules R1-R5, the bounds) and holds ``PortableModel``: deterministic
quantization, the fingerprint, the per-device ``Runtime`` and the choice of backend. Two backends compute
the one arithmetic, and the seam runs one way (``model`` -> backend; a backend imports neither ``model``
nor the other backend):
- ``reference.py``: torch ops, the reference and the path on CUDA;
- ``cpu.py``: numba kernels, the path on a CPU (the same IEEE operations, op for op).
``tables.py`` builds the exp, GELU and rotary tables from exact software arithmetic.
"""

from .model import DEFAULT_OPTIONS, FORMAT, PortableCache, PortableModel, ieee_fp32_matmuls

__all__ = ["PortableModel", "PortableCache", "DEFAULT_OPTIONS", "FORMAT", "ieee_fp32_matmuls"]
