"""The spectral block's ops, registered with ``torch.library``, one file per op.

- :mod:`~spectriton.ops.layer`: ``spectriton::layer`` (product, threshold, split tanh,
  compaction) and its autograd glue; :mod:`~spectriton.ops.layer_backward`:
  ``spectriton::layer_backward``, its gradients by name.
- :mod:`~spectriton.ops.output`: ``spectriton::output`` (compressed spectrum -> spatial
  output) and ``spectriton::output_backward``.
- :mod:`~spectriton.ops.rebuild`: a block input rebuilt from its recipe.
- :mod:`~spectriton.ops.spec`: :class:`LayerSpec`, a layer's configuration, the ops'
  ``spec`` argument.

Each op has a fake implementation, so ``torch.compile`` captures a spectral model as one
graph: the number of kept entries is data-dependent and the fake ``layer`` declares it as a
new dynamic size. The ops themselves stay opaque to the compiler; on CUDA the Triton
kernels run inside them (:mod:`spectriton.backend` picks them at each call). The maths they
call lives in modules named after it: :mod:`spectriton.moments`, :mod:`spectriton.density`,
:mod:`spectriton.nonfinite`, :mod:`spectriton.windows`, :mod:`spectriton.numerics`.
"""

from spectriton.ops import layer, output, rebuild
from spectriton.ops.spec import LayerSpec

__all__ = ["LayerSpec", "layer", "output", "rebuild"]
