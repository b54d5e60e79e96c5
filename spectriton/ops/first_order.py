"""Spectral layers differentiate once: their backward ops have no gradient of their own."""

DOUBLE_BACKWARD = (
    "double backward (a gradient of a gradient: gradient penalties, Hessian-vector products) "
    "is not supported by spectral layers"
)


def refuse_double_backward(op, name: str) -> None:
    """Register a backward for ``op`` (the backward op of ``name``) that raises a clear error, in place of
    torch's "no autograd formula" for a gradient taken through a gradient."""

    def backward(ctx, *grads):
        raise RuntimeError(f"{DOUBLE_BACKWARD} (through spectriton::{name})")

    op.register_autograd(backward)
