"""BatchNorm's part in a normalised spectral layer, as one component: :class:`SpectralNorm`."""

from __future__ import annotations

import torch
from torch import nn

MOMENTUM = 0.1  # of the running threshold (density mode) and moments (normalize), as nn.BatchNorm2d's
_INITIAL = {"running_mean": 0.0, "running_var": 1.0, "num_batches_tracked": 0}  # nn.BatchNorm2d's


def running_update(running: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """``running`` moved toward ``batch`` by ``MOMENTUM`` (``batch`` itself where ``running``
    is NaN), left as it is where ``batch`` is not finite; on the device, no host
    synchronisation. Used for the running moments and a density budget's running threshold."""
    batch = batch.to(running)
    updated = torch.where(torch.isnan(running), batch, torch.lerp(running, batch, MOMENTUM))
    return torch.where(torch.isfinite(batch), updated, running)


class SpectralNorm(nn.Module):
    """The running statistics a normalised :class:`~spectriton.SpectralConv2d` normalises
    each output channel of its product with, their calibration and update, and the affine
    weight and bias that then scale and shift each channel.

    State and names are ``nn.BatchNorm2d``'s (``running_mean``, ``running_var``,
    ``num_batches_tracked``; ``weight`` and ``bias``), so a BatchNorm's state_dict loads into
    it and back. The statistics are those of each channel's map on the layer's spectral
    grid, read off its spectrum (the mean from the DC bin, the mean square by Parseval); the
    layer takes them as :meth:`moments`, mean and mean square. Statistics still at
    BatchNorm's initial values (mean 0, variance 1, no batch tracked: a BatchNorm that never
    ran) are set to the first training batch's; each training batch then moves the mean and
    the mean square by ``MOMENTUM``. Eval mode reads them as they are, never the batch's.
    ``affine``: the weight and bias are applied (present but not applied, they are kept for
    the BatchNorm's state_dict keys).
    """

    _keys_elsewhere = False  # whether an Absorbed placeholder holds this state's state_dict keys
    _checked = False  # whether the statistics are known to be calibrated (eager, since the last load)
    _zero_check = False  # whether an all-zero weight is left out (a BatchNorm's: see from_batchnorm)
    _scale_checked = False  # whether _zero_scale was read off the weight since the last load
    _zero_scale = False  # whether the weight was all zero then

    def __init__(
        self,
        num_features: int,
        affine: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_features, self.affine = num_features, affine
        for name, value in _INITIAL.items():
            shape, kind = ((), torch.long) if name == "num_batches_tracked" else ((num_features,), None)
            self.register_buffer(name, torch.full(shape, value, dtype=kind, device=device))
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features, device=device, dtype=dtype))
            self.bias = nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype))

    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm, affine: bool = True) -> SpectralNorm:
        """``bn``'s role: its own weight, bias and running statistics (the same tensors, not
        copies), its weight and bias applied if ``affine`` and ``bn`` has them, unless that
        weight is all zero when the layer first runs (a residual branch zero-initialised to
        start as the identity, as timm's ResNets do: split tanh cannot, since its threshold
        acts on the shortcut too, and the branch would stay silent).

        ``bn``'s ``running_mean`` and ``running_var`` are each channel's mean and unbiased
        variance over the pixels of its output; taken here as the mean and variance of the
        channel's map on the layer's grid, which also holds a border (where the kernel
        overhangs the zero-padded input, in the first layer of a block: 11 % of a 34 x 34
        grid for 32 x 32 maps, more on small maps; later layers of a block are circular on
        the grid). Ignoring that border and the unbiased factor is the approximation: a
        pretrained model evaluates from its BatchNorms' statistics, never the batch's, and
        training moves them to the grid's own. A BatchNorm that does not track statistics
        lends none: they start at the initial values, outside the state_dict."""
        norm = cls(bn.num_features, device="meta")
        norm.affine = affine and bn.affine
        norm._zero_check = True
        for name in ("weight", "bias"):
            setattr(norm, name, getattr(bn, name))  # a Parameter, or None
        device = next((t.device for t in (*bn.parameters(), *bn.buffers())), None)
        for name, value in _INITIAL.items():
            tracked = getattr(bn, name) if bn.track_running_stats else None
            fresh = torch.full_like(getattr(norm, name), value, device=device)
            norm.register_buffer(name, fresh if tracked is None else tracked, persistent=tracked is not None)
        return norm

    def forward(self, training: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the layer's step normalises with: :meth:`moments` and :meth:`scale_shift`."""
        return self.moments(training), self.scale_shift()

    def moments(self, training: bool) -> torch.Tensor:
        """``(2, C)``: each channel's mean and mean square on the grid; in training NaN
        where uncalibrated (the layer then uses the batch's)."""
        mean = self.running_mean
        moments = torch.stack([mean, self.running_var + mean.square()])
        return torch.where(self._uncalibrated(), float("nan"), moments) if training else moments

    def _uncalibrated(self) -> torch.Tensor:
        mean, var = self.running_mean, self.running_var
        initial = (self.num_batches_tracked == 0) & (mean == 0) & (var == 1)
        return initial | mean.isnan() | var.isnan()

    def needs_calibration(self) -> bool:
        """Whether a channel is uncalibrated (eager: one host read, until the next load)."""
        if self._checked:
            return False
        self._checked = True
        return bool(self._uncalibrated().any())

    def calibrate(self, batch: torch.Tensor) -> None:
        """Set the uncalibrated channels' statistics to ``batch``'s moments (``(2, C)``)."""
        with torch.no_grad():
            self._store(torch.where(self._uncalibrated(), batch.to(self.running_mean), self.moments(False)))

    def update(self, batch: torch.Tensor) -> None:
        """Move the statistics toward ``batch``'s moments by ``MOMENTUM`` (set them where
        uncalibrated), where ``batch`` is finite; on the device, no host synchronisation."""
        with torch.no_grad():
            self._store(running_update(self.moments(True), batch))
            self.num_batches_tracked.add_(1)

    def update_after_backward(self, batch: torch.Tensor, output: torch.Tensor) -> None:
        """:meth:`update` once the backward of the layer op that made ``output`` has run, so
        that a checkpoint's recompute, which runs before (it feeds that backward),
        normalises as its forward did; at once where no backward will (``output`` not in a
        graph, or compiling). The hook lives in that forward's graph: a graph dropped unused
        moves nothing."""
        node = None if torch.compiler.is_compiling() else output.grad_fn  # compiled: no graph to read
        if node is None:
            self.update(batch)
            return
        batch = batch.detach()  # not the graph's: the hook would hold its node in a cycle
        node.register_hook(lambda grad_inputs, grad_outputs: self.update(batch))

    def _store(self, moments: torch.Tensor) -> None:
        self.running_mean.copy_(moments[0])
        self.running_var.copy_(moments[1] - moments[0].square())

    def scale_shift(self) -> torch.Tensor | None:
        """The ``(2, C)`` weight and bias the normalised channels are scaled and shifted by,
        or None (not ``affine``, or a BatchNorm's weight that was all zero when first read)."""
        if not self.affine:
            return None
        if self._zero_check and not self._scale_checked and not torch.compiler.is_compiling():
            self._zero_scale = not bool(self.weight.detach().any())  # one host read, once
            self._scale_checked = True
        return None if self._zero_scale else torch.stack([self.weight, self.bias])

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        if not self._keys_elsewhere:
            self.save_state(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        if not self._keys_elsewhere:
            self.load_state(state_dict, prefix, *args)

    def save_state(self, destination, prefix, keep_vars) -> None:
        """Write this state's entries under ``prefix`` (its own, or its placeholder's)."""
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def load_state(self, state_dict, prefix, *args) -> None:
        """Read this state's entries under ``prefix``; the statistics are optional (missing,
        they start at the initial values)."""
        missing_keys = args[2]  # (local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        super()._load_from_state_dict(state_dict, prefix, *args)
        for name, value in _INITIAL.items():
            key = prefix + name
            if key not in state_dict and key in missing_keys:
                missing_keys.remove(key)
                with torch.no_grad():
                    getattr(self, name).fill_(value)
        self._checked = self._scale_checked = False

    def extra_repr(self) -> str:
        return f"{self.num_features}, affine={self.affine}"
