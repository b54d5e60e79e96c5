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


def test_a_converted_model_under_torch_checkpoint_trains_as_without_it():
    """A normalised layer moves its running statistics once its backward comes, so that the
    recompute of an outer ``torch.utils.checkpoint`` (which runs before) normalises with
    the moments its forward used: outputs, every gradient and the statistics equal the
    unwrapped model's over steps on new batches (before: the recompute read the moved
    statistics, kept other entries, and the checkpoint raised or the gradients differed)."""
    import copy

    import spectriton
    from spectriton.checkpointing import checkpoint_children

    torch.manual_seed(0)
    stage = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
    )  # fmt: skip
    plain = spectriton.convert(torch.nn.Sequential(stage, torch.nn.Flatten(), torch.nn.Linear(8 * 36, 3)))
    plain = plain.double()
    wrapped = checkpoint_children(copy.deepcopy(plain), ["0"])
    assert isinstance(wrapped[0], Checkpointed)
    for step in range(4):
        x = torch.randn(4, 3, 6, 6, dtype=torch.float64) * (1 + step)  # statistics that move
        got, want = _outputs_and_grads(wrapped, x), _outputs_and_grads(plain, x)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
        for a, b in zip(wrapped.buffers(), plain.buffers(), strict=True):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=0, equal_nan=True)


@pytest.mark.parametrize("converted", [False, True], ids=["original", "converted"])
def test_a_resnet_with_its_stem_and_stages_checkpointed_computes_the_same(converted):
    """``checkpoint_stages``: the usual baseline (stem and stages), and a converted ResNet's
    stages, whose blocks rebuild their inputs from the blocks before in forward and replay."""
    torchvision = pytest.importorskip("torchvision")
    import copy

    import spectriton
    from spectriton.checkpointing import checkpoint_stages

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).double()
    model = spectriton.convert(model) if converted else model
    wrapped = checkpoint_stages(copy.deepcopy(model))
    assert sum(isinstance(m, Checkpointed) for m in wrapped.modules()) == (4 if converted else 5)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    for a, b in zip(_outputs_and_grads(wrapped, x), _outputs_and_grads(model, x), strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
