"""Drop-in spectral convolution modules: a single layer and a block of layers.

Both take and return spatial NCHW tensors. Weights are shaped and named like
``nn.Conv2d``'s, so a Conv2d state_dict loads into :class:`SpectralConv2d`.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from spectriton import _checks, transforms
from spectriton.blocks import run_dense_layers, run_layers
from spectriton.functional import SpectralFlow, spectral_layer
from spectriton.geometry import LayerShape
from spectriton.norm import SpectralNorm, running_update

STARVED = 0.01  # a layer keeping less than this fraction of its spectrum in training is warned about


class SpectralConv2d(nn.Module):
    """A convolution computed as a product of spectra, optionally a SpecNet layer.

    With ``beta=0`` and ``activation=None`` it returns what ``F.conv2d`` returns (float32
    round-off). ``activation="split_tanh"`` zeroes spectral entries of magnitude at most
    ``beta`` and applies tanh to the real and imaginary parts; what it saves for backward
    is then the compressed spectrum. ``value_dtype`` (``torch.bfloat16`` or
    ``torch.float16``) halves the bytes of the kept values; in eval mode, which keeps
    nothing, values stay in full precision (a sample's output then does not depend on the
    batch it is evaluated in).

    ``density=d`` replaces the fixed ``beta`` by a budget: in training each step keeps
    about a fraction ``d`` of the product's entries (a quantile of their magnitudes), and a
    running average of those thresholds, the ``threshold`` buffer, is used in eval mode.
    Every layer then keeps something, however deep, and memory follows the budget.

    ``normalize=True`` normalises each output channel of the product as BatchNorm does,
    before the threshold: its mean (on the grid: the DC bin) is taken off and it is divided
    by its standard deviation (the mean square by Parseval): what the layer keeps, and the
    scale it passes on, no longer depend on the weights' scale, and ``beta`` is relative to
    each channel's standard deviation. Its submodule ``norm``, a
    :class:`~spectriton.norm.SpectralNorm`, holds what BatchNorm contributes: the running
    statistics used (``running_moments``: ``(2, out_channels)``, mean and mean square,
    running averages of the batches', momentum ``spectriton.norm.MOMENTUM``; the first training batch
    calibrates them in a forward without autograd), constants of each step, so the
    gradients are exact for the forward computed. ``affine=True`` (with ``normalize``) then
    scales each channel by ``norm.weight`` and shifts it by ``norm.bias`` (trainable, ones
    and zeros at first), as BatchNorm's ``weight`` and ``bias`` do. A layer made by
    ``from_conv(conv, bn)`` (``spectriton.convert`` makes its layers so) holds ``bn``'s own
    weight, bias and running statistics in its ``norm`` instead.

    Used alone it is a block of one layer (one FFT, one IFFT); chain several in a
    :class:`SpectralSequential` to stay in the spectral domain between them.

    ``keep`` is what the block this layer starts keeps for backward (the memory policy):
    ``"spectra"``, its layers' compressed spectra; ``"input"``, its input and shortcut only
    (each as the recipe an earlier block keeps anyway, where it has one), the block running
    again in backward; ``"auto"`` (the default), whichever is smaller by the rule of
    :func:`spectriton.blocks.run_layers`. Outputs and gradients are the same either way.
    ``last_keep`` says which the block kept in its last forward (eager only), as
    ``last_density`` says the fraction of its spectrum the layer kept.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        bias: bool = True,
        *,
        beta: float = 0.0,
        activation: str | None = None,
        value_dtype: torch.dtype | None = None,
        density: float | None = None,
        padding_mode: str = "zeros",
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        normalize: bool = False,
        affine: bool = False,
        keep: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.keep = _checks.keep(keep)
        self._plan = None  # keep="auto"'s decision until the next backward (spectriton.blocks)
        self._warned = False  # about a starved spectrum, once
        self.in_channels = _checks.positive_int(in_channels, "in_channels")
        self.out_channels = _checks.positive_int(out_channels, "out_channels")
        self.kernel_size = _checks.pair(kernel_size, "kernel_size", minimum=1)
        self.stride = _checks.pair(stride, "stride", minimum=1)
        self.dilation = _checks.pair(dilation, "dilation", minimum=1)
        self.groups = _checks.positive_int(groups, "groups")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by "
                f"groups ({groups})"
            )
        self.padding = _checks.conv_padding(
            padding, transforms.spread(self.kernel_size, self.dilation), self.stride
        )
        _checks.boolean(bias, "bias")
        if padding_mode != "zeros":
            raise ValueError(
                f"padding_mode must be 'zeros' (the spectral grid is zero-padded), got {padding_mode!r}"
            )
        self.padding_mode = padding_mode
        self.beta = _checks.beta(beta)
        self.activation = _checks.activation(activation)
        self.value_dtype = _checks.value_dtype(value_dtype)
        self.density = _checks.density(density)
        if self.density is not None and self.beta != 0:
            raise ValueError("give either beta or density, not both")
        self.last_density: float | None = None
        self.last_keep: str | None = None  # what the block this layer starts kept in its last forward
        if self.density is not None:
            self.register_buffer("threshold", torch.full((), float("nan"), device=device))
        self.normalize = _checks.boolean(normalize, "normalize")
        factory = {"device": device, "dtype": _checks.real_dtype(dtype)}
        if _checks.boolean(affine, "affine") and not self.normalize:
            raise ValueError("affine=True needs normalize=True (it scales the normalised channels)")
        self.norm = SpectralNorm(out_channels, affine, **factory) if self.normalize else None
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size, **factory)
        )
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Conv2d``'s initialisation; with split tanh, He-normal with tanh's gain and a
        zero bias instead, so that spectral magnitudes neither fade nor blow up with depth
        (with Conv2d's, a VGG-deep stack keeps nothing above beta 0.7 at initialisation)."""
        if self.activation == "split_tanh":
            nn.init.kaiming_normal_(self.weight, nonlinearity="tanh")
            if self.bias is not None:
                nn.init.zeros_(self.bias)
            return
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, norm: nn.BatchNorm2d | None = None, **options) -> SpectralConv2d:
        """A spectral layer sharing ``conv``'s weight and bias (not copies). With ``norm``, the
        BatchNorm that follows ``conv``, it is a normalised layer instead, whose ``norm``
        submodule (:meth:`SpectralNorm.from_batchnorm <spectriton.norm.SpectralNorm.from_batchnorm>`)
        holds ``norm``'s own running statistics, which its moments start from, and its
        weight and bias, applied unless ``affine=False`` or that weight is all zero when the
        layer first runs (a zero-initialised residual branch)."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be a torch.nn.Conv2d, got {type(conv).__name__}")
        affine = True
        if norm is not None:
            if not isinstance(norm, nn.modules.batchnorm._BatchNorm):
                raise TypeError(f"norm must be a BatchNorm, got {type(norm).__name__}")
            affine = _checks.boolean(options.pop("affine", True), "affine")
            options.update(normalize=True)
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.bias is not None,
            padding_mode=conv.padding_mode,
            dilation=conv.dilation,
            groups=conv.groups,
            device="meta",
            **options,
        )
        layer.weight, layer.bias = conv.weight, conv.bias
        layer.train(conv.training)
        device = conv.weight.device
        if layer.density is not None:  # uncalibrated, on conv's device
            layer.threshold = torch.full_like(layer.threshold, float("nan"), device=device)
        if norm is not None:
            layer.norm = SpectralNorm.from_batchnorm(norm, affine)
        elif layer.normalize:
            layer.norm = SpectralNorm(conv.out_channels, layer.affine, device, conv.weight.dtype)
        return layer

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        """``nn.Conv2d``'s state_dict loads strictly: the running ``threshold`` buffer and
        the norm's statistics are optional (missing, they start uncalibrated). The keys of a
        normalised layer saved before its norm was a submodule (``running_moments``,
        ``norm_weight``, ``norm_bias``) load into it."""
        missing_keys = args[2]  # (local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if self.norm is not None:
            moments = state_dict.pop(prefix + "running_moments", None)
            if moments is not None:  # mean and mean square
                state_dict[prefix + "norm.running_mean"] = moments[0]
                state_dict[prefix + "norm.running_var"] = moments[1] - moments[0].square()
            for old, new in (("norm_weight", "norm.weight"), ("norm_bias", "norm.bias")):
                if prefix + old in state_dict:
                    state_dict[prefix + new] = state_dict.pop(prefix + old)
        super()._load_from_state_dict(state_dict, prefix, *args)
        key = prefix + "threshold"
        if self.density is not None and key not in state_dict and key in missing_keys:
            missing_keys.remove(key)
            with torch.no_grad():
                self.threshold.fill_(float("nan"))

    @property
    def linear(self) -> bool:
        """Whether this layer is ``nn.Conv2d`` exactly: no threshold, activation or normalisation."""
        return self.beta == 0 and self.activation is None and self.density is None and self.norm is None

    @property
    def affine(self) -> bool:
        """Whether the normalised channels are scaled and shifted by ``norm``'s weight and bias."""
        return self.norm is not None and self.norm.affine

    @property
    def running_moments(self) -> torch.Tensor:
        """``(2, out_channels)``: each channel's running mean and mean square on the grid
        (read from ``norm``, which holds them)."""
        return self.norm.moments(False)

    @property
    def norm_weight(self) -> nn.Parameter:
        return self.norm.weight

    @property
    def norm_bias(self) -> nn.Parameter:
        return self.norm.bias

    @property
    def shape(self) -> LayerShape:
        return LayerShape(transforms.spread(self.kernel_size, self.dilation), self.padding, self.stride)

    def forward(
        self,
        x: torch.Tensor | SpectralFlow | list[SpectralFlow] | None = None,
        residual: torch.Tensor | None = None,
        *,
        input: torch.Tensor | None = None,
    ) -> torch.Tensor | SpectralFlow:
        """Spatial in, spatial out. Inside a block: one :meth:`step` on the block's flow.
        ``residual`` (broadcasting to the output) is added before the threshold and
        activation. ``input`` is ``x`` by ``nn.Conv2d``'s name for it (``conv(input=x)``)."""
        x = input if x is None else x
        flows = [x] if isinstance(x, SpectralFlow) else x
        if isinstance(flows, (list, tuple)) and flows and all(isinstance(f, SpectralFlow) for f in flows):
            return self.step(flows, residual)
        return run_layers([self], x, hooks=False, residual=residual)

    def step(
        self, flows: list[SpectralFlow], residual: torch.Tensor | None = None, replay: tuple | None = None
    ) -> SpectralFlow:
        """Product with this layer's kernel spectrum, threshold and activation, on the
        spectral flow of a block (several flows in a dense block, channels in order);
        ``residual``, a spatial batch broadcasting to the block's output, is added to the product
        (after the normalisation) in the spectral domain. ``replay``: ``(moments, training)``
        when a checkpoint runs this step again in backward, as the forward ran it (the
        running statistics stay as they are)."""
        norm = self.norm
        training = self.training if replay is None else replay[1]
        moments = affine = None
        if replay is not None:
            moments, affine = replay[0], None if norm is None else norm.scale_shift()
        elif norm is not None:
            if training and not torch.compiler.is_compiling() and norm.needs_calibration():
                self._calibrate(flows)
            moments, affine = norm(training)
        running = self.threshold if self.density is not None and not training else None
        # eval keeps nothing for backward: full-precision values, so that a sample's output
        # does not hang on batch-dependent round-off flipping a bfloat16 rounding
        value_dtype = self.value_dtype if training else None
        flow = self._layer(
            flows, value_dtype, running=running, moments=moments, residual=residual, affine=affine
        )
        if training and replay is None:
            if self.density is not None:
                with torch.no_grad():
                    self.threshold.copy_(running_update(self.threshold, flow.beta))
            if norm is not None:  # after the backward: a checkpoint's recompute normalises alike
                norm.update_after_backward(flow.moments, flow.values)
        if not torch.compiler.is_compiling():  # a host number: eager only
            self.last_density = flow.density
            if self.training and self.last_density < STARVED and not self._warned:
                self._warned = True
                warnings.warn(
                    f"SpectralConv2d({self.extra_repr()}) keeps {self.last_density:.2%} of its spectrum "
                    f"in training, too little to learn from; a density budget (density=0.1) keeps a "
                    f"fixed fraction whatever the weights' scale",
                    stacklevel=2,
                )
        return flow

    def _layer(self, flows: list[SpectralFlow], value_dtype: torch.dtype | None, **options) -> SpectralFlow:
        """:func:`spectral_layer` with this layer's parameters and settings."""
        return spectral_layer(
            flows, self.weight, self.bias, self.padding, self.beta, self.activation, value_dtype,
            self.density, groups=self.groups, dilation=self.dilation, stride=self.stride, **options,
        )  # fmt: skip

    def _calibrate(self, flows: list[SpectralFlow]) -> None:
        """Set the norm's uncalibrated statistics to this batch's moments, in a forward
        without autograd (eager only: compiled, the op uses the batch's moments where they
        are uncalibrated, and the update sets them)."""
        with torch.no_grad():
            flow = self._layer(flows, self.value_dtype, moments=self.norm.moments(True))
        self.norm.calibrate(flow.moments)

    def extra_repr(self) -> str:
        text = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}, beta={self.beta}"
        )
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.keep != "auto":
            text += f", keep={self.keep!r}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.activation:
            text += f", activation={self.activation!r}"
        if self.value_dtype is not None:
            text += f", value_dtype={self.value_dtype}"
        if self.density is not None:
            text += f", density={self.density}"
        if self.normalize:
            text += ", normalize=True"
        if self.affine:
            text += ", affine=True"
        return text


def stays_spatial(conv: nn.Conv2d) -> str:
    """Why :meth:`SpectralConv2d.from_conv` cannot take ``conv``, or "" if it can."""
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r} (the spectral grid is zero-padded)"
    if conv.padding == "same" and any(k % 2 == 0 for k in conv.kernel_size):
        return "padding='same' with an even kernel (asymmetric padding)"
    return ""


class SpectralSequential(nn.Sequential):
    """Spectral layers chained between one FFT and one IFFT, as the paper's blocks are.

    The input is padded once to the block's grid; the later layers are circular
    convolutions on that grid (DESIGN.md section 2). Only the last layer may have a stride.
    """

    def __init__(self, *layers: SpectralConv2d) -> None:
        if not layers:
            raise ValueError("SpectralSequential needs at least one SpectralConv2d")
        for index, layer in enumerate(layers):
            if not isinstance(layer, SpectralConv2d):
                raise TypeError(f"layer {index} must be a SpectralConv2d, got {type(layer).__name__}")
        for index, (a, b) in enumerate(zip(layers, layers[1:])):
            if a.out_channels != b.in_channels:
                raise ValueError(
                    f"layer {index + 1} expects {b.in_channels} in_channels but layer {index} "
                    f"gives {a.out_channels}"
                )
        value_dtypes = {layer.value_dtype for layer in layers}
        if len(value_dtypes) > 1:
            raise ValueError(f"the layers of a block must share one value_dtype, got {value_dtypes}")
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_layers(list(self), x)


class SpectralDenseBlock(nn.Module):
    """DenseNet's dense block in the spectral domain: one FFT in, one IFFT out.

    Layer ``i`` reads the block input and every earlier layer's output (channels
    concatenated in that order, as in DenseNet) and adds ``growth`` channels; the output
    is all of them concatenated, ``in_channels + layers * growth`` channels of the input's
    size. Each source stays compressed once; no concatenated copy is ever made.
    ``normalize`` and ``affine`` are each layer's (:class:`SpectralConv2d`): BatchNorm's
    normalisation and its affine, as DenseNet's layers have them.
    """

    def __init__(
        self,
        in_channels: int,
        growth: int,
        layers: int,
        kernel_size: int = 3,
        *,
        beta: float = 0.0,
        activation: str | None = "split_tanh",
        density: float | None = None,
        value_dtype: torch.dtype | None = None,
        bias: bool = True,
        normalize: bool = False,
        affine: bool = False,
    ) -> None:
        super().__init__()
        _checks.positive_int(layers, "layers")
        _checks.positive_int(growth, "growth")
        if _checks.positive_int(kernel_size, "kernel_size") % 2 == 0:
            raise ValueError(f"kernel_size must be odd to keep the map's size, got {kernel_size}")
        self.in_channels, self.growth = in_channels, growth
        self.out_channels = in_channels + layers * growth
        options = dict(
            beta=beta, activation=activation, density=density, value_dtype=value_dtype, bias=bias,
            normalize=normalize, affine=affine,
        )  # fmt: skip
        self.layers = nn.ModuleList(
            SpectralConv2d(in_channels + i * growth, growth, kernel_size, padding=kernel_size // 2, **options)
            for i in range(layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_dense_layers([[layer] for layer in self.layers], x)
