"""Products whose result for one image does not depend on the batch it is scored in.

A BLAS matmul picks its kernel and its summation order by the matrix shapes (and the CPU), so an image's
row of ``x @ w.T`` can differ in the last bits between a batch of 18 and a batch of 2. Heads promise an
image's logits alone and in a batch agree to float32 rounding (the contract suite checks 1e-5 of the logits'
scale), not bit for bit: no head can keep that on every CPU, since the final matmul against the class
features is BLAS's. Where a product's output is wide (a cache of support images, an adapter's hidden
layer), it is computed here row by row, as an elementwise product and a sum over the last dimension, so
that wide product adds no batch-dependent rounding of its own.
"""

from __future__ import annotations

import torch


def row_dot(x: torch.Tensor, w: torch.Tensor, budget: int = 1 << 24) -> torch.Tensor:
    """(n, d) x (k, d) -> (n, k) = x @ w.T, each row computed alone, in chunks of ~``budget`` elements."""
    if torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting():
        # one product over the whole batch: the chunk loop below would fix the batch size in an exported graph
        return (x[:, None, :] * w[None]).sum(-1)
    rows = max(1, budget // max(w.numel(), 1))
    parts = [(x[i : i + rows, None, :] * w[None]).sum(-1) for i in range(0, x.shape[0], rows)]
    return torch.cat(parts) if parts else x.new_zeros(0, w.shape[0])
