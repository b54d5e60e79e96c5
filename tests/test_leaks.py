"""No leaks: training steps do not accumulate tensors, every saved tensor dies with its
graph, and a forward without grad saves nothing."""

import gc

import pytest
import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef

import spectriton as st


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        st.SpectralSequential(
            st.SpectralConv2d(1, 4, 3, padding=1, beta=0.3, activation="split_tanh"),
            st.SpectralConv2d(4, 4, 3, padding=1, density=0.3, activation="split_tanh"),
        ),
        st.CompactMaxPool2d(2),
        st.SpectralDenseBlock(4, 2, layers=2, beta=0.3),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 3),
    )


def _batch(n=4):
    return torch.randn(n, 1, 8, 8), torch.randint(0, 3, (n,))


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor))


class _Tracker:
    """saved_tensors_hooks that count packs and keep a weak reference to each saved storage.

    Packing a detached alias (not the tensor itself, whose grad_fn may hold the packed
    object) keeps the hooks from making a reference cycle of their own.
    """

    def __init__(self, skip=()):
        self.packs, self.refs = 0, []
        self.skip = {t.untyped_storage().data_ptr() for t in skip}

    def pack(self, t):
        self.packs += 1
        if t.untyped_storage().data_ptr() not in self.skip:
            self.refs.append(StorageWeakRef(t.untyped_storage()))
        return t.detach()

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)

    def alive(self) -> int:
        gc.collect()
        return sum(not ref.expired() for ref in self.refs)


def test_training_steps_do_not_accumulate_tensors():
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        x, target = _batch()
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), target).backward()
        optimizer.step()

    for _ in range(2):  # gradients and momentum buffers appear in the first steps
        step()
    before = _live_tensors()
    for _ in range(10):
        step()
    # a leak grows the count by at least one tensor a step; it may shrink meanwhile, where
    # caches filled by earlier tests (the DFT tables' LRU cache) evict what they held
    assert _live_tensors() <= before


@pytest.mark.parametrize("retain", [False, True], ids=["backward", "retained_graph_deleted"])
def test_every_saved_tensor_dies_with_its_graph(retain):
    model = _model()
    x, target = _batch()
    tracker = _Tracker(skip=[x, target, *model.parameters(), *model.buffers()])
    with tracker.hooks():
        loss = nn.functional.cross_entropy(model(x), target)
    assert tracker.packs > 0 and tracker.alive() == len(tracker.refs) > 0
    loss.backward(retain_graph=retain)
    if retain:
        assert tracker.alive() > 0
    del loss
    assert tracker.alive() == 0  # compressed values, masks, offsets, pool indices: all freed


def test_compressed_outputs_are_freed_after_backward():
    block = _model()[0]
    refs = []
    for layer in block:
        layer.register_forward_hook(
            lambda _m, _i, flow: refs.extend(
                StorageWeakRef(t.untyped_storage()) for t in (flow.values, flow.mask, flow.offsets)
            )
        )
    y = block(torch.randn(2, 1, 8, 8))
    gc.collect()
    assert len(refs) == 6 and not any(ref.expired() for ref in refs)
    y.square().sum().backward()
    del y
    gc.collect()
    assert all(ref.expired() for ref in refs)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
def test_a_forward_without_grad_saves_nothing(mode):
    model = _model()
    tracker = _Tracker()
    with mode(), tracker.hooks():
        model(_batch()[0])
    assert tracker.packs == 0
    with tracker.hooks():  # the same forward with grad does save (the hooks work)
        model(_batch()[0])
    assert tracker.packs > 0


def test_a_normalised_layers_dropped_graph_is_freed_without_the_garbage_collector():
    """A normalised layer's statistics wait for its backward in a hook on its op's node;
    dropped unused, that graph goes by reference counting alone: no cycle through the hook
    for the collector to find later (meanwhile its saved tensors would raise the next
    step's peak)."""
    layer = st.SpectralConv2d(3, 4, 3, padding=1, activation="split_tanh", normalize=True)
    x = torch.randn(2, 3, 8, 8)
    layer(x).sum().backward()  # calibrated
    tracker = _Tracker(skip=[x, *layer.parameters(), *layer.buffers()])
    gc.disable()
    try:
        with tracker.hooks():
            y = layer(x)
        assert tracker.refs and all(not ref.expired() for ref in tracker.refs)
        del y
        assert sum(not ref.expired() for ref in tracker.refs) == 0
    finally:
        gc.enable()
