"""The checkpointing baseline: torch.utils.checkpoint around each block of a zoo network."""

import pytest
import torch

from spectriton import models
from spectriton.checkpointing import Checkpointed, checkpoint_blocks
from spectriton.memory import saved_bytes


def _outputs_and_grads(model, x):
    y = model(x)
    return [y, *torch.autograd.grad(y.square().sum(), list(model.parameters()))]


@pytest.mark.parametrize("spectral", [False, True], ids=["spatial", "spec"])
@pytest.mark.parametrize("name", models.MODELS)
def test_checkpointed_blocks_give_the_same_results_and_keep_only_block_inputs(name, spectral):
    torch.manual_seed(0)
    model = models.build(name, spectral=spectral, density=0.2 if spectral else None)
    size = models.input_size(name)
    x = torch.randn(2, 1, size, size)
    wrapped = checkpoint_blocks(model)
    blocks = list(wrapped[0])
    assert all(isinstance(b, Checkpointed) for b in blocks) and len(blocks) >= 2
    assert list(wrapped.parameters()) == list(model.parameters())  # shared, not copied
    model.eval(), wrapped.eval()  # fixed thresholds: recomputation sees the same ones
    for a, b in zip(_outputs_and_grads(model, x), _outputs_and_grads(wrapped, x), strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
    inputs = []
    hooks = [b.register_forward_pre_hook(lambda m, args: inputs.append(args[0])) for b in blocks]
    kept = saved_bytes(wrapped, x)
    for hook in hooks:
        hook.remove()
    block_inputs = sum(t.untyped_storage().nbytes() for t in inputs[1:])  # the network input is x
    assert kept.total >= block_inputs  # what the checkpoints keep is counted
    assert kept.total < saved_bytes(model, x).total
