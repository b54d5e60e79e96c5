"""The ops' typed arguments round-trip through their encodings, field by field."""

import pytest
import torch

from spectriton.geometry import BlockGeometry
from spectriton.ops.spec import LayerSpec, from_named, to_named
from spectriton.provenance import RecipeArgs

GEOM = BlockGeometry(size=(7, 9), grid=(9, 11), offset=(2, 1), full=(7, 9), stride=(2, 3))


@pytest.mark.parametrize(
    "spec",
    [
        LayerSpec((3, 3), 0.7, True, None, (3,), ((0, 0),)),
        LayerSpec((5, 3), 0.1 + 0.2, False, torch.bfloat16, (4, 6), ((1, 0), (0, 2)), 0.2, 2, (2, 1), True),
    ],
    ids=["plain", "every-field"],
)
def test_layer_spec_decodes_to_itself(spec):
    assert LayerSpec.decode(spec.encode(), spec.beta, spec.density) == spec


@pytest.mark.parametrize("pool", [None, ((3, 3), (2, 2), (1, 1))], ids=["no-pool", "pool"])
def test_recipe_args_and_geometry_decode_to_themselves(pool):
    assert BlockGeometry.from_args(GEOM.to_args()) == GEOM
    args = RecipeArgs(4, 16, GEOM, True, pool)
    assert len(args.encode()) == 19
    assert RecipeArgs.decode(args.encode()) == args


def test_named_tensors_keep_their_names_and_drop_the_missing():
    a, b = torch.zeros(1), torch.ones(2)
    names, named = to_named({"running": None, "moments": a, "affine": b})
    assert names == "moments,affine"
    assert from_named(names, named) == {"moments": a, "affine": b}
    assert from_named(*to_named({"residual": None})) == {}
