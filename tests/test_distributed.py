"""Data-parallel training on CPU over gloo, two processes, each on half of the batch.

DistributedDataParallel and FSDP2 (``fully_shard``) must give the gradients one process
gets on the whole batch. Both workers run once (one spawn) for the whole module.
"""

import datetime
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import spectriton as st

WORLD = 2

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo")


def _model() -> nn.Module:
    """At beta 0 the keep rule is continuous: the transforms' GEMMs round a sample's spectra
    differently in batches of different sizes (BLAS blocking), which at a positive beta may
    move an entry across the threshold in one process and not in the other."""
    torch.manual_seed(0)
    return st.models.lenet5(spectral=True, beta=0.0)


def _batch():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(4, 1, 28, 28, generator=generator), torch.randint(0, 10, (4,), generator=generator)


def _loss(model, x, target):
    return nn.functional.cross_entropy(model(x), target)


def _error(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def _ddp(x, target) -> dict:
    model = nn.parallel.DistributedDataParallel(_model())
    _loss(model, x, target).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9).step()
    return {"ddp": grads, "ddp_stepped": [p.detach().clone() for p in model.parameters()]}


def _fsdp2(x, target) -> list[torch.Tensor] | str:
    try:
        from torch.distributed.fsdp import fully_shard

        model = _model()
        for module in model.modules():
            if isinstance(module, st.SpectralSequential):
                fully_shard(module)
        fully_shard(model)
        _loss(model, x, target).backward()
        return [p.grad.full_tensor() for p in model.parameters()]
    except Exception as error:  # recorded: the test skips with it
        return _error(error)


def _fsdp1(x, target) -> list[torch.Tensor] | str:
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = FullyShardedDataParallel(_model(), use_orig_params=True)
        _loss(model, x, target).backward()
        with FullyShardedDataParallel.summon_full_params(model, with_grads=True):
            return [p.grad.clone() for p in model.parameters()]
    except Exception as error:  # recorded: the test skips with it
        return _error(error)


def _worker(rank: int, port: int, path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        x, target = (t.chunk(WORLD)[rank] for t in _batch())
        results = _ddp(x, target)
        results["fsdp2"] = _fsdp2(x, target)
        results["fsdp1"] = _fsdp1(x, target)
        torch.save(results, f"{path}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of the two ranks computed."""
    path = str(tmp_path_factory.mktemp("ddp") / "rank")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, path), nprocs=WORLD, join=True)
    return [torch.load(f"{path}.{rank}", weights_only=False) for rank in range(WORLD)]


@pytest.fixture(scope="module")
def single():
    """Gradients of one process on the whole batch."""
    model = _model()
    _loss(model, *_batch()).backward()
    return [p.grad for p in model.parameters()]


def _assert_same_grads(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_ddp_gives_the_single_process_gradients(ranks, single):
    for rank in ranks:
        _assert_same_grads(rank["ddp"], single)
    for a, b in zip(ranks[0]["ddp_stepped"], ranks[1]["ddp_stepped"]):
        assert torch.equal(a, b)  # the ranks stay in sync after an optimizer step


@pytest.mark.parametrize("kind", ["fsdp2", "fsdp1"])
def test_fsdp_gives_the_single_process_gradients(kind, ranks, single):
    result = ranks[0][kind]
    if isinstance(result, str):
        pytest.skip(f"{kind} does not run on CPU with gloo here: {result}")
    for rank in ranks:
        _assert_same_grads(rank[kind], single)
