"""ReLU nets and the description of their hidden *units*.

A unit of hidden layer j is row j of (W_j, b_j) plus column j of W_{j+1} (Kuditipudi et al. 2019,
notation of docs/definitions.md). In a CNN a unit is an output channel: its kernel slice, bias and
BatchNorm entries, and the matching input-channel slice of the next layer; for conv -> flatten ->
linear, the block of linear columns that channel produces. `Units` states this once, as data
(the idea of git re-basin's permutation specs), and dropout stability, the constructive paths and
permutation alignment all read it. A unit group may span several blocks: its `incoming` and
`outgoing` slices may lie in any number of tensors (a residual stream written by every block and
read by every block is one group), and alignment permutes them together.

A model that is a plain chain of layers (x^j = relu(pool(W_j x^{j-1} + b_j)), f = z^d) also
describes that chain as data, with `layer_maps()` returning `LayerMaps`: the stages that noise
stability, the greedy dropout search and the constructive paths compute with. A new model family is
one class: `units()` always, `layer_maps()` if it is a plain chain. Features that need the chain
ask `require_chain(model, feature)`, which refuses other models (and BatchNorm nets, through the one
BatchNorm refusal `refuse_batchnorm`) with one message.

Models:
  * `MLP`: d weight layers, ReLU, unit-wise dropout.
  * `ConvNet`: VGG-style conv stack (3-wide convs, "M" = max-pool), optional BatchNorm, dense head,
    channel-wise dropout; 1-D convs for sequences (mnist1d), 2-D for images. Presets `convfc`
    and `vgg16` are the curve-finding benchmark nets (Garipov et al. 2018).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import IsthmusError
from .params import Params, has_bn

# ----------------------------------------------------------------------------- unit description


@dataclass(frozen=True)
class TensorSlice:
    """The entries of state-dict tensor `name` that belong to a unit, indexed along `axis`.

    `block` > 1 when each unit owns `block` consecutive entries (a conv channel flattened into a
    linear layer owns spatial-size columns).
    """

    name: str
    axis: int
    block: int = 1

    def index(self, units: Tensor) -> Tensor:
        """Positions along `axis` of the given unit indices (block-expanded)."""
        units = torch.as_tensor(units, dtype=torch.long)
        if self.block == 1:
            return units
        offs = torch.arange(self.block, device=units.device)
        return (units[:, None] * self.block + offs).reshape(-1)


@dataclass(frozen=True)
class Layer:
    """A group of `size` units permuted or dropped together: the slices that write it (`incoming`)
    and that read it (`outgoing`). In a plain chain a group is one hidden layer; a group may list
    slices of any number of tensors (e.g. a residual stream: every block's output rows incoming,
    every block's input columns outgoing)."""

    name: str
    size: int
    incoming: tuple[TensorSlice, ...]
    outgoing: tuple[TensorSlice, ...]
    parent: str | None = None

    # A *nested* group (`parent` set) lives inside the units of group `parent`, `size // parent
    # size` entries per parent unit (the dimensions inside an attention head). Its slices index the
    # whole axis (block 1) and its permutation is a permutation of all `size` entries that moves
    # whole parent blocks as the parent's permutation does, and reorders entries within each block
    # (so queries and keys, or values and the output projection, share one order per head).


@dataclass(frozen=True)
class Units:
    """Unit groups (for a plain chain: hidden layers 1..d-1 in forward order) and the tensors of the
    output layer (W_d, b_d). `depth` = d counts weight layers of a plain chain."""

    layers: tuple[Layer, ...]
    head: tuple[str, ...]

    @property
    def depth(self) -> int:
        return len(self.layers) + 1

    def children(self, name: str) -> tuple[Layer, ...]:
        """The nested groups inside group `name` (empty for every group of an MLP or CNN)."""
        return tuple(la for la in self.layers if la.parent == name)


def take(t: Tensor, s: TensorSlice, units: Tensor) -> Tensor:
    """The part of tensor `t` owned by `units` (in that order)."""
    return t.index_select(s.axis, s.index(units).to(t.device))


def put(t: Tensor, s: TensorSlice, units: Tensor, values: Tensor) -> Tensor:
    """Copy of `t` with the entries of `units` replaced by `values` (shaped like `take`)."""
    out = t.clone()
    out.index_copy_(s.axis, s.index(units).to(t.device), values.to(t.dtype))
    return out


def units_of(model: nn.Module) -> Units:
    """The unit description of a model; a clear error for modules that do not provide one."""
    fn = getattr(model, "units", None)
    if fn is None:
        raise IsthmusError(
            f"{type(model).__name__} has no unit description: give it a `units()` method returning "
            "isthmus.models.Units (see isthmus.models.MLP.units for an example)"
        )
    return fn()


# ----------------------------------------------------------------------------- layer maps


@dataclass(frozen=True)
class Stage:
    """Weight layer j of a plain chain: z^j = pool^pools(W_j x^{j-1} + b_j).

    `name` is the hidden layer's name in `Units` (any name for the output stage); `weight`/`bias`
    the state-dict names (bias None when absent). kind "linear" flattens its input; "conv1d" and
    "conv2d" apply W_j as a convolution with `padding`; `pool` is the max-pool (kernel, stride).
    """

    name: str
    weight: str
    bias: str | None = None
    kind: str = "linear"
    padding: int = 0
    pools: int = 0
    pool: tuple[int, int] = (2, 2)

    def linear(self, p: Params, x: Tensor) -> Tensor:
        """W_j x: no bias, no pooling."""
        w = p[self.weight]
        if self.kind == "linear":
            return F.linear(x.flatten(1), w)
        conv = F.conv1d if self.kind == "conv1d" else F.conv2d
        return conv(x, w, None, padding=self.padding)

    def pre(self, p: Params, x: Tensor) -> Tensor:
        """z^j = pool^pools(W_j x + b_j)."""
        z = self.linear(p, x)
        if self.bias is not None:
            z = z + p[self.bias].reshape(-1, *([1] * (z.dim() - 2)))
        for _ in range(self.pools):
            z = _max_pool(z, self.pool)
        return z

    def frobenius(self, p: Params, x: Tensor) -> float:
        """||W_j||_F of the linear operator x -> W_j x on inputs shaped like x (exact)."""
        w = p[self.weight].double()
        if self.kind == "linear":
            return float(w.norm())
        # each output entry is a row of the operator: sum over the kernel taps that hit the input
        w2 = w.pow(2).sum(1, keepdim=True)  # (O, 1, k...)
        ones = torch.ones(1, 1, *x.shape[2:], dtype=w.dtype, device=w.device)
        conv = F.conv1d if self.kind == "conv1d" else F.conv2d
        return float(conv(ones, w2, None, padding=self.padding).sum().sqrt())


def _max_pool(z: Tensor, pool: tuple[int, int]) -> Tensor:
    fn = F.max_pool1d if z.dim() == 3 else F.max_pool2d
    return fn(z, pool[0], pool[1])


@dataclass(frozen=True)
class LayerMaps:
    """A plain chain of d weight layers as maps between activations, over a parameter dict.

    Layer j (1..d): z^j = `stages[j-1].pre(p, x^{j-1})`, x^j = relu(z^j) for j < d, f = z^d
    (pooling commutes with ReLU). x^0 is the input flattened (`input_shape` None) or reshaped to
    `input_shape` and max-pooled `lead_pools` times.
    """

    stages: tuple[Stage, ...]
    input_shape: tuple[int, ...] | None = None
    lead_pools: int = 0
    pool: tuple[int, int] = (2, 2)

    @property
    def depth(self) -> int:
        return len(self.stages)

    def inputs(self, x: Tensor) -> Tensor:
        """x^0 for a batch of raw inputs."""
        if self.input_shape is None:
            return x.flatten(1)
        x = x.reshape(x.shape[0], *self.input_shape)
        for _ in range(self.lead_pools):
            x = _max_pool(x, self.pool)
        return x

    def linear(self, j: int, p: Params, x: Tensor) -> Tensor:
        """W_j x^{j-1} (no bias, no pooling)."""
        return self.stages[j - 1].linear(p, x)

    def pre(self, j: int, p: Params, x: Tensor) -> Tensor:
        """z^j from x^{j-1}."""
        return self.stages[j - 1].pre(p, x)

    def frobenius(self, j: int, p: Params, x: Tensor) -> float:
        """||W_j||_F of layer j's linear operator on inputs shaped like x."""
        return self.stages[j - 1].frobenius(p, x)

    def forward(self, p: Params, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """([x^0, ..., x^{d-1}], [z^1, ..., z^d]) for a batch of raw inputs x."""
        xs, zs = [self.inputs(x)], []
        for j in range(1, self.depth + 1):
            zs.append(self.pre(j, p, xs[-1]))
            if j < self.depth:
                xs.append(F.relu(zs[-1]))
        return xs, zs

    def suffix(self, p: Params, i: int, xi: Tensor, upto: int | None = None) -> list[Tensor]:
        """[z^{i+1}, ..., z^{upto}] computed from x^i (upto defaults to d)."""
        out, h = [], xi
        for j in range(i + 1, (upto or self.depth) + 1):
            out.append(self.pre(j, p, h))
            h = F.relu(out[-1])
        return out


def refuse_batchnorm(model: nn.Module | Params, feature: str) -> None:
    """The one BatchNorm refusal of the features defined for nets without BatchNorm (dropout and
    noise stability, the constructive paths): their moves and ratios assume fixed per-unit maps,
    while the BatchNorm policy (docs/definitions.md) recomputes statistics at every point."""
    if isinstance(model, nn.Module):
        bn = has_bn(model)
    else:
        bn = any(k.endswith(("running_mean", "running_var")) for k in model)
    if bn:
        raise IsthmusError(
            f"{feature} is defined for nets without BatchNorm (docs/definitions.md, BatchNorm "
            "policy); train the net with batchnorm=false (without --batchnorm)"
        )


# What needs only `units()` or nothing of the model's structure (said in require_chain's refusal)
WORKS_ANYWHERE = (
    "lines, curves, AutoNEB, the orthogonal finder, planes, trees, the Hessian, subspaces, "
    "ensembles and alignment (with REPAIR)"
)


def require_chain(model: nn.Module, feature: str) -> LayerMaps:
    """The layer maps of a plain-chain model without BatchNorm; one clear refusal for others.

    Nested dropout, noise stability and the Theorem 1/2 paths drop or rewrite whole layers of a
    chain x^j = relu(pool(W_j x^{j-1} + b_j)); a model declares that it is one by `layer_maps()`.
    """
    why = getattr(model, "not_a_chain", None)
    if why is not None:
        raise IsthmusError(
            f"{feature} needs a plain chain of layers: its theorems (Kuditipudi et al. 2019) drop "
            "and rewrite whole layers of x^j = relu(W_j x^{j-1} + b_j), one after the other, and "
            f"{why}; {WORKS_ANYWHERE} work on it"
        )
    refuse_batchnorm(model, feature)
    fn = getattr(model, "layer_maps", None)
    if fn is None:
        raise IsthmusError(
            f"{feature} needs a plain chain of layers, and {type(model).__name__} does not "
            "describe one: give it a `layer_maps()` method returning isthmus.models.LayerMaps "
            "(see isthmus.models.MLP.layer_maps), or use a method that needs only `units()` "
            "(alignment, lines, curves, AutoNEB)"
        )
    maps = fn()
    units = units_of(model)
    if maps.depth != units.depth or any(
        st.name != layer.name for st, layer in zip(maps.stages, units.layers, strict=False)
    ):
        raise IsthmusError(
            f"{type(model).__name__}: layer_maps() lists stages "
            f"{[st.name for st in maps.stages]} but units() hidden layers "
            f"{[la.name for la in units.layers]} (+ the output layer); they must match in order"
        )
    return maps


# ----------------------------------------------------------------------------- configuration


# Upper bounds of every architecture (docs/models.md): far beyond what the tools are used for, and
# low enough that a mistyped size is an error instead of an allocation of terabytes or a hang.
MAX_DEPTH, MAX_WIDTH, MAX_CLASSES = 256, 65_536, 100_000
MAX_INPUT, MAX_PARAMETERS = 2**26, 2 * 10**9


@dataclass(frozen=True)
class ModelConfig:
    """Architecture, as stored under "model" in a run's config.json (docs/definitions.md).

    depth = number of weight layers (MLP), residual blocks per stage (resnet), blocks (transformer);
    width = hidden units per layer (MLP), channel multiplier (resnet: 16, 32, 64 times width),
    model dimension (transformer); channels = conv plan for CNNs, ints and "M" (max-pool);
    layernorm = LayerNorm over channels in a resnet; heads and patch (input entries per token)
    of the transformer.
    """

    kind: str = "mlp"
    depth: int = 3
    width: int | tuple[int, ...] = 256
    channels: tuple[int | str, ...] = (32, "M", 64, "M", 64, "M")
    bias: bool = True
    batchnorm: bool = False
    input_shape: tuple[int, ...] = (40,)
    num_classes: int = 10
    layernorm: bool = False
    heads: int = 4
    patch: int = 4

    def to_dict(self) -> dict:
        d = asdict(self)
        d["width"] = list(self.width) if isinstance(self.width, tuple) else self.width
        d["channels"] = list(self.channels)
        d["input_shape"] = list(self.input_shape)
        return d

    @staticmethod
    def from_dict(d: dict, source: str = "config") -> ModelConfig:
        known = set(ModelConfig.__dataclass_fields__)
        extra = set(d) - known
        if extra:
            raise IsthmusError(
                f"{source}: unknown model field(s) {sorted(extra)}; known: {sorted(known)}"
            )
        d = dict(d)
        if isinstance(d.get("width"), list):
            d["width"] = tuple(d["width"])
        for k in ("channels", "input_shape"):
            if k in d:
                d[k] = tuple(d[k])
        cfg = ModelConfig(**d)
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "config") -> None:
        """Types, ranges and upper bounds (so that a typo such as a width of 1e12 fails here with a
        message instead of trying to allocate terabytes or running for ever)."""

        def bad(fieldname: str, why: str) -> IsthmusError:
            return IsthmusError(f"{source}: model.{fieldname} {why}")

        def integer(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if self.kind not in MODEL_KINDS:
            raise bad("kind", f"is {self.kind!r}; choose one of {sorted(MODEL_KINDS)}")
        for name in ("bias", "batchnorm", "layernorm"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, f"must be true or false, got {getattr(self, name)!r}")
        if self.layernorm and self.kind != "resnet":
            raise bad("layernorm", "applies to kind resnet only (the transformer always has it)")
        if self.batchnorm and self.layernorm:
            raise bad("layernorm", "and model.batchnorm exclude each other; choose one norm")
        if self.batchnorm and self.kind == "transformer":
            raise bad("batchnorm", "is not available for the (pre-LayerNorm) transformer")
        for name in ("heads", "patch"):
            v = getattr(self, name)
            if not integer(v) or not 1 <= v <= MAX_WIDTH:
                raise bad(name, f"must be an integer in [1, {MAX_WIDTH}], got {v!r}")
        if not integer(self.num_classes) or not 1 <= self.num_classes <= MAX_CLASSES:
            raise bad(
                "num_classes", f"must be an integer in [1, {MAX_CLASSES}], got {self.num_classes!r}"
            )
        shape = self.input_shape
        if not shape or len(shape) > 3 or any(not integer(n) or n < 1 for n in shape):
            raise bad("input_shape", f"must be 1 to 3 positive integers, got {list(shape)!r}")
        if math.prod(shape) > MAX_INPUT:
            raise bad("input_shape", f"has {math.prod(shape)} entries; at most {MAX_INPUT}")
        if self.kind == "mlp":
            if not integer(self.depth) or not 1 <= self.depth <= MAX_DEPTH:
                raise bad(
                    "depth",
                    f"must be an integer in [1, {MAX_DEPTH}] (number of weight layers), "
                    f"got {self.depth!r}",
                )
            widths = _widths(self.width, self.depth)
            if any(not integer(w) or not 1 <= w <= MAX_WIDTH for w in widths):
                raise bad("width", f"must be integers in [1, {MAX_WIDTH}], got {self.width!r}")
            sizes = [math.prod(shape), *widths, self.num_classes]
            n = sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
            if n > MAX_PARAMETERS:
                raise bad(
                    "width", f"gives {n:.3g} weights; at most {MAX_PARAMETERS:.3g} fit in memory"
                )
        if self.kind == "cnn":
            if (
                not self.channels
                or len(self.channels) > MAX_DEPTH
                or any(
                    not (c == "M" or (integer(c) and 1 <= c <= MAX_WIDTH)) for c in self.channels
                )
            ):
                raise bad(
                    "channels",
                    f"must list at most {MAX_DEPTH} entries, integers in [1, {MAX_WIDTH}] and 'M', "
                    f"got {list(self.channels)!r}",
                )
            widths = [math.prod(shape[:-1]) if len(shape) > 1 else 1]
            widths += [c for c in self.channels if c != "M"]
            n = sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))
            if n * 9 > MAX_PARAMETERS:
                raise bad(
                    "channels", f"give about {9 * n:.3g} weights; at most {MAX_PARAMETERS:.3g}"
                )
        if self.kind in ("resnet", "transformer"):
            self._validate_residual(bad, integer)

    def _validate_residual(self, bad, integer) -> None:
        """Sizes of the residual net and the transformer (bounded like the others)."""
        shape = self.input_shape
        if not integer(self.depth) or not 1 <= self.depth <= MAX_DEPTH:
            raise bad("depth", f"must be an integer in [1, {MAX_DEPTH}], got {self.depth!r}")
        top = MAX_WIDTH // 64 if self.kind == "resnet" else MAX_WIDTH
        if not integer(self.width) or not 1 <= self.width <= top:
            what = "channel multiplier" if self.kind == "resnet" else "model dimension"
            raise bad("width", f"({what}) must be an integer in [1, {top}], got {self.width!r}")
        if self.kind == "resnet":
            taps = 9 if len(shape) == 3 else 3
            n = 3 * 2 * self.depth * taps * (64 * self.width) ** 2
        else:
            if self.width % self.heads:
                raise bad("heads", f"must divide model.width {self.width}, got {self.heads}")
            if math.prod(shape) % self.patch:
                raise bad(
                    "patch", f"must divide the {math.prod(shape)} input entries, got {self.patch}"
                )
            n = 12 * self.depth * self.width**2
        if n > MAX_PARAMETERS:
            raise bad("width", f"gives about {n:.3g} weights; at most {MAX_PARAMETERS:.3g}")


def _widths(width: int | Sequence[int], depth: int) -> tuple[int, ...]:
    if isinstance(width, int):
        return (width,) * (depth - 1)
    width = tuple(width)
    if len(width) != depth - 1:
        raise IsthmusError(
            f"width lists {len(width)} layers but depth {depth} has {depth - 1} hidden layers"
        )
    return width


# ----------------------------------------------------------------------------- MLP


class MLP(nn.Module):
    """x^j = relu(W_j x^{j-1} + b_j) for j < d; f(x) = W_d x^{d-1} + b_d. Input is flattened."""

    def __init__(
        self,
        in_features: int,
        width: int | Sequence[int],
        depth: int,
        num_classes: int,
        bias: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        sizes = [in_features, *_widths(width, depth), num_classes]
        self.layers = nn.ModuleList(
            nn.Linear(a, b, bias=bias) for a, b in zip(sizes, sizes[1:], strict=False)
        )
        self.dropout = dropout
        self.bias = bias

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for layer in self.layers[:-1]:
            x = F.dropout(F.relu(layer(x), inplace=True), self.dropout, self.training)
        return self.layers[-1](x)

    def units(self) -> Units:
        layers = []
        for j in range(len(self.layers) - 1):
            inc = [TensorSlice(f"layers.{j}.weight", 0)]
            if self.bias:
                inc.append(TensorSlice(f"layers.{j}.bias", 0))
            out = (TensorSlice(f"layers.{j + 1}.weight", 1),)
            layers.append(Layer(f"layers.{j}", self.layers[j].out_features, tuple(inc), out))
        last = len(self.layers) - 1
        head = (f"layers.{last}.weight",) + ((f"layers.{last}.bias",) if self.bias else ())
        return Units(tuple(layers), head)

    def repair_points(self) -> tuple[Affine, ...]:
        """The preactivations of every hidden layer."""
        return tuple(_affine(f"layers.{j}", -1, self.bias) for j in range(len(self.layers) - 1))

    def layer_maps(self) -> LayerMaps:
        return LayerMaps(
            tuple(
                Stage(
                    f"layers.{k}", f"layers.{k}.weight", f"layers.{k}.bias" if self.bias else None
                )
                for k in range(len(self.layers))
            )
        )


# ----------------------------------------------------------------------------- CNNs


@dataclass(frozen=True)
class ConvPlan:
    """Conv stack: `channels` (ints and "M"), kernel/padding, pooling, dense hidden widths."""

    channels: tuple[int | str, ...]
    kernel: int = 3
    padding: int = 1
    pool: tuple[int, int] = (2, 2)  # (kernel, stride)
    fc: tuple[int, ...] = ()
    extra: dict = field(default_factory=dict)


class ConvNet(nn.Module):
    """VGG-style ReLU CNN: conv (+BN) + ReLU (+channel dropout), "M" max-pool, then linear layers.

    dim=1 uses Conv1d on (C, L) inputs (mnist1d), dim=2 Conv2d on (C, H, W) images. The dense part
    is `fc` hidden ReLU layers and a linear output layer.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        plan: ConvPlan,
        num_classes: int,
        bias: bool = True,
        batchnorm: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.dim = len(input_shape) - 1
        if self.dim not in (1, 2):
            raise IsthmusError(
                f"ConvNet input_shape must be (C, L) or (C, H, W), got {tuple(input_shape)}"
            )
        conv = nn.Conv1d if self.dim == 1 else nn.Conv2d
        bn = nn.BatchNorm1d if self.dim == 1 else nn.BatchNorm2d
        self.pool_fn = F.max_pool1d if self.dim == 1 else F.max_pool2d
        self.plan, self.bias, self.batchnorm, self.dropout = plan, bias, batchnorm, dropout
        self.input_shape = tuple(input_shape)
        self.convs, self.bns = nn.ModuleList(), nn.ModuleList()
        c, spatial = input_shape[0], list(input_shape[1:])
        self.steps: list[str] = []
        for item in plan.channels:
            if item == "M":
                k, s = plan.pool
                spatial = [(n - k) // s + 1 for n in spatial]
                self.steps.append("M")
                continue
            self.convs.append(conv(c, int(item), plan.kernel, padding=plan.padding, bias=bias))
            if batchnorm:
                self.bns.append(bn(int(item)))
            spatial = [n + 2 * plan.padding - plan.kernel + 1 for n in spatial]
            c = int(item)
            self.steps.append("C")
        if min(spatial) < 1:
            raise IsthmusError(
                f"conv plan {list(plan.channels)} pools input {tuple(input_shape)} to nothing"
            )
        self.spatial = int(torch.tensor(spatial).prod())
        sizes = [c * self.spatial, *plan.fc, num_classes]
        self.fcs = nn.ModuleList(
            nn.Linear(a, b, bias=bias) for a, b in zip(sizes, sizes[1:], strict=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        drop = F.dropout1d if self.dim == 1 else F.dropout2d
        x = x.reshape(x.shape[0], *self.input_shape)
        k = 0
        for step in self.steps:
            if step == "M":
                x = self.pool_fn(x, self.plan.pool[0], self.plan.pool[1])
                continue
            x = self.convs[k](x)
            if self.batchnorm:
                x = self.bns[k](x)
            x = F.relu(x, inplace=True)
            if self.dropout > 0:
                x = drop(x, self.dropout, self.training)
            k += 1
        x = x.flatten(1)
        for fc in self.fcs[:-1]:
            x = F.dropout(F.relu(fc(x), inplace=True), self.dropout, self.training)
        return self.fcs[-1](x)

    def units(self) -> Units:
        layers = []
        n = len(self.convs)
        for k, conv in enumerate(self.convs):
            inc = [TensorSlice(f"convs.{k}.weight", 0)]
            if self.bias:
                inc.append(TensorSlice(f"convs.{k}.bias", 0))
            if self.batchnorm:
                inc += [
                    TensorSlice(f"bns.{k}.{p}", 0)
                    for p in ("weight", "bias", "running_mean", "running_var")
                ]
            if k + 1 < n:
                out = TensorSlice(f"convs.{k + 1}.weight", 1)
            else:
                out = TensorSlice("fcs.0.weight", 1, block=self.spatial)
            layers.append(Layer(f"convs.{k}", conv.out_channels, tuple(inc), (out,)))
        for j, fc in enumerate(self.fcs[:-1]):
            inc = [TensorSlice(f"fcs.{j}.weight", 0)] + (
                [TensorSlice(f"fcs.{j}.bias", 0)] if self.bias else []
            )
            layers.append(
                Layer(
                    f"fcs.{j}",
                    fc.out_features,
                    tuple(inc),
                    (TensorSlice(f"fcs.{j + 1}.weight", 1),),
                )
            )
        last = len(self.fcs) - 1
        head = (f"fcs.{last}.weight",) + ((f"fcs.{last}.bias",) if self.bias else ())
        return Units(tuple(layers), head)

    def repair_points(self) -> tuple[Affine, ...]:
        """The preactivations of every conv and hidden dense layer (none with BatchNorm, whose
        statistics are recomputed at every point)."""
        if self.batchnorm:
            return ()
        convs = [_affine(f"convs.{k}", 1, self.bias) for k in range(len(self.convs))]
        return (*convs, *(_affine(f"fcs.{j}", -1, self.bias) for j in range(len(self.fcs) - 1)))

    def layer_maps(self) -> LayerMaps:
        """Conv layer j with the max-pools after it, then the dense layers; pools before the first
        conv belong to x^0. BatchNorm nets are no plain chain (`require_chain` refuses them)."""
        stages: list[Stage] = []
        lead, k = 0, 0
        kind, pad, pool = f"conv{self.dim}d", self.plan.padding, tuple(self.plan.pool)
        for step in self.steps:
            if step == "M":
                if stages:
                    stages[-1] = replace(stages[-1], pools=stages[-1].pools + 1)
                else:
                    lead += 1
                continue
            bias = f"convs.{k}.bias" if self.bias else None
            stages.append(Stage(f"convs.{k}", f"convs.{k}.weight", bias, kind, pad, 0, pool))
            k += 1
        for j in range(len(self.fcs)):
            stages.append(
                Stage(f"fcs.{j}", f"fcs.{j}.weight", f"fcs.{j}.bias" if self.bias else None)
            )
        return LayerMaps(tuple(stages), self.input_shape, lead, pool)


# ----------------------------------------------------------------------------- REPAIR points


@dataclass(frozen=True)
class Affine:
    """Where REPAIR may correct unit statistics (Jordan et al. 2023): submodule `module` outputs
    the units along `axis` (1: conv channels, -1: features), as y = (a map ending in) scale * u +
    shift, so a per-unit correction y -> a y + c folds into the parameters: every tensor in
    `scale` is multiplied by a along its axis 0, and c is added to `shift` (None: no bias to
    shift, REPAIR refuses)."""

    module: str
    axis: int
    scale: tuple[str, ...]
    shift: str | None


def repair_points_of(model: nn.Module) -> tuple[Affine, ...]:
    """The REPAIR points of a model, in forward order; a clear error where there are none."""
    fn = getattr(model, "repair_points", None)
    if fn is None:
        raise IsthmusError(
            f"{type(model).__name__} does not say where REPAIR may correct statistics: give it a "
            "`repair_points()` method returning isthmus.models.Affine entries"
        )
    return fn()


def _affine(module: str, axis: int, bias: bool) -> Affine:
    w = f"{module}.weight"
    return Affine(
        module, axis, (w, f"{module}.bias") if bias else (w,), f"{module}.bias" if bias else None
    )


# ----------------------------------------------------------------------------- residual nets


class ChannelNorm(nn.Module):
    """LayerNorm over the channels at each position, with a gain and shift per channel (the
    LayerNorm of residual nets in Ainsworth et al. 2023); permuting channels commutes with it."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        y = F.layer_norm(x.movedim(1, -1), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.movedim(-1, 1)


NORMS = ("none", "batchnorm", "layernorm")


def _norm_entries(prefix: str, norm: str) -> list[TensorSlice]:
    names = {"batchnorm": ("weight", "bias", "running_mean", "running_var"),
             "layernorm": ("weight", "bias")}.get(norm, ())  # fmt: skip
    return [TensorSlice(f"{prefix}.{p}", 0) for p in names]


def _make_norm(dim: int, norm: str, c: int) -> nn.Module:
    if norm == "batchnorm":
        return (nn.BatchNorm1d if dim == 1 else nn.BatchNorm2d)(c)
    return ChannelNorm(c) if norm == "layernorm" else nn.Identity()


class ResBlock(nn.Module):
    """relu(shortcut(x) + norm2(conv2(relu(norm1(conv1(x)))))); the shortcut is the identity, or a
    1-wide conv (+ norm) where the block changes width or stride."""

    def __init__(self, dim: int, c_in: int, c: int, stride: int, bias: bool, norm: str):
        super().__init__()
        conv = nn.Conv1d if dim == 1 else nn.Conv2d
        make_norm = lambda: _make_norm(dim, norm, c)  # noqa: E731
        self.conv1 = conv(c_in, c, 3, stride=stride, padding=1, bias=bias)
        self.norm1 = make_norm()
        self.conv2 = conv(c, c, 3, padding=1, bias=bias)
        self.norm2 = make_norm()
        self.projects = stride != 1 or c_in != c
        if self.projects:
            self.short = conv(c_in, c, 1, stride=stride, bias=bias)
            self.short_norm = make_norm()
        self.dropout, self.dim = 0.0, dim

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        if self.dropout > 0:
            h = (F.dropout1d if self.dim == 1 else F.dropout2d)(h, self.dropout, self.training)
        s = self.short_norm(self.short(x)) if self.projects else x
        return F.relu(s + self.norm2(self.conv2(h)))


class ResNet(nn.Module):
    """ResNet-20 style (He et al. 2016, CIFAR variant): a 3-wide conv stem, three stages of
    `blocks` residual blocks with 16, 32, 64 times `width` channels (stride 2 into stages 2 and 3),
    global average pooling and a linear head. dim = 1 (mnist1d) or 2 (images); norm "none",
    "batchnorm" or "layernorm" (over channels). ResNet-20 is blocks = 3."""

    not_a_chain = "a residual net adds every block's output to a stream that skips it"

    def __init__(
        self,
        input_shape: Sequence[int],
        width: int,
        blocks: int,
        num_classes: int,
        bias: bool = True,
        norm: str = "none",
        dropout: float = 0.0,
    ):
        super().__init__()
        self.dim = len(input_shape) - 1
        if self.dim not in (1, 2) or norm not in NORMS:
            raise IsthmusError(
                f"ResNet needs input_shape (C, L) or (C, H, W) and norm in {NORMS}, got "
                f"{tuple(input_shape)}, {norm!r}"
            )
        self.input_shape, self.norm, self.bias, self.n_blocks = (
            tuple(input_shape),
            norm,
            bias,
            blocks,
        )
        self.widths = (16 * width, 32 * width, 64 * width)
        conv = nn.Conv1d if self.dim == 1 else nn.Conv2d
        self.stem = conv(input_shape[0], self.widths[0], 3, padding=1, bias=bias)
        self.stem_norm = _make_norm(self.dim, norm, self.widths[0])
        self.blocks = nn.ModuleList()
        c_in = self.widths[0]
        for s, c in enumerate(self.widths):
            for b in range(blocks):
                stride = 2 if s > 0 and b == 0 else 1
                self.blocks.append(ResBlock(self.dim, c_in, c, stride, bias, norm))
                self.blocks[-1].dropout = dropout
                c_in = c
        self.head = nn.Linear(self.widths[-1], num_classes, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], *self.input_shape)
        x = F.relu(self.stem_norm(self.stem(x)))
        for blk in self.blocks:
            x = blk(x)
        return self.head(x.flatten(2).mean(2))

    def _writes(self, conv: str, norm: str) -> list[TensorSlice]:
        inc = [TensorSlice(f"{conv}.weight", 0)] + (
            [TensorSlice(f"{conv}.bias", 0)] if self.bias else []
        )
        return inc + _norm_entries(norm, self.norm)

    def units(self) -> Units:
        """Per stage one stream group (the stem or the stage's first block writes it, every block
        of the stage adds to it, the next stage's first block or the head reads it) and the
        hidden channels of every block."""
        layers = []
        for s, c in enumerate(self.widths):
            idx = range(s * self.n_blocks, (s + 1) * self.n_blocks)
            inc = self._writes("stem", "stem_norm") if s == 0 else []
            for i in idx:
                inc += self._writes(f"blocks.{i}.conv2", f"blocks.{i}.norm2")
                if self.blocks[i].projects:
                    inc += self._writes(f"blocks.{i}.short", f"blocks.{i}.short_norm")
            readers = list(idx)[1:] + ([idx[-1] + 1] if s < 2 else [])
            out = []
            for i in readers:
                out.append(TensorSlice(f"blocks.{i}.conv1.weight", 1))
                if self.blocks[i].projects:
                    out.append(TensorSlice(f"blocks.{i}.short.weight", 1))
            if s == 2:
                out.append(TensorSlice("head.weight", 1))
            if s == 0:  # the stream before the first block is read by that block too
                out = [TensorSlice("blocks.0.conv1.weight", 1)] + out
            layers.append(Layer(f"stream.{s}", c, tuple(inc), tuple(out)))
            for i in idx:
                layers.append(
                    Layer(
                        f"blocks.{i}",
                        c,
                        tuple(self._writes(f"blocks.{i}.conv1", f"blocks.{i}.norm1")),
                        (TensorSlice(f"blocks.{i}.conv2.weight", 1),),
                    )
                )
        return Units(tuple(layers), ("head.weight",) + (("head.bias",) if self.bias else ()))

    def repair_points(self) -> tuple[Affine, ...]:
        """The outputs of every norm (LayerNorm) or, without norms, of every conv."""
        if self.norm == "batchnorm":
            return ()
        mods = ["stem" if self.norm == "none" else "stem_norm"]
        for i, blk in enumerate(self.blocks):
            for conv, norm in (("conv1", "norm1"), ("conv2", "norm2"), ("short", "short_norm")):
                if conv != "short" or blk.projects:
                    mods.append(f"blocks.{i}.{conv if self.norm == 'none' else norm}")
        bias = self.bias or self.norm == "layernorm"
        return tuple(_affine(m, 1, bias) for m in mods)


# ----------------------------------------------------------------------------- transformers


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + O attn(Q, K, V of ln1 x), then x + fc2 gelu(fc1 ln2 x)."""

    def __init__(self, width: int, heads: int, bias: bool, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.q, self.k, self.v, self.o = (nn.Linear(width, width, bias=bias) for _ in range(4))
        self.fc1 = nn.Linear(width, 4 * width, bias=bias)
        self.fc2 = nn.Linear(4 * width, width, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        a = self.ln1(x)
        q, k, v = (
            m(a).reshape(n, t, self.heads, -1).transpose(1, 2) for m in (self.q, self.k, self.v)
        )
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        x = x + self.o((att @ v).transpose(1, 2).reshape(n, t, d))
        h = F.dropout(F.gelu(self.fc1(self.ln2(x))), self.dropout, self.training)
        return x + self.fc2(h)


class Transformer(nn.Module):
    """A small pre-LayerNorm transformer classifier: the flattened input cut into tokens of `patch`
    entries, a linear embedding plus a learned position embedding, `depth` blocks, a final
    LayerNorm, the mean over tokens and a linear head (mnist1d read as a sequence of 10 tokens)."""

    not_a_chain = (
        "a transformer adds every block to a residual stream and mixes tokens by attention"
    )

    def __init__(
        self,
        n_inputs: int,
        width: int,
        depth: int,
        heads: int,
        patch: int,
        num_classes: int,
        bias: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        if width % heads or n_inputs % patch:
            raise IsthmusError(
                f"Transformer: heads {heads} must divide width {width} and patch {patch} the "
                f"{n_inputs} input entries"
            )
        self.patch, self.heads, self.width, self.bias = patch, heads, width, bias
        self.embed = nn.Linear(patch, width, bias=bias)
        self.pos = nn.Parameter(0.02 * torch.randn(n_inputs // patch, width))
        self.blocks = nn.ModuleList(
            TransformerBlock(width, heads, bias, dropout) for _ in range(depth)
        )
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x.reshape(x.shape[0], -1, self.patch)) + self.pos
        for blk in self.blocks:
            h = blk(h)
        return self.head(self.ln_f(h).mean(1))

    def units(self) -> Units:
        """The residual stream (one group for the embedding, every block and the head); per block
        the heads, nested in them the query/key and the value/output dimensions, and the MLP's
        hidden units."""
        d, hd = self.width, self.width // self.heads

        def rows(m: str, block: int = 1) -> list[TensorSlice]:
            out = [TensorSlice(f"{m}.weight", 0, block)]
            bias = self.bias or ".ln" in f".{m}"  # LayerNorms always have a shift
            return out + ([TensorSlice(f"{m}.bias", 0, block)] if bias else [])

        inc = rows("embed") + [TensorSlice("pos", 1)]
        out: list[TensorSlice] = []
        inner: list[Layer] = []
        for i in range(len(self.blocks)):
            b = f"blocks.{i}"
            inc += rows(f"{b}.o") + rows(f"{b}.fc2") + rows(f"{b}.ln1") + rows(f"{b}.ln2")
            out += [TensorSlice(f"{b}.{m}.weight", 1) for m in ("q", "k", "v", "fc1")]
            heads = f"{b}.heads"
            inner += [
                Layer(heads, self.heads, tuple(rows(f"{b}.q", hd) + rows(f"{b}.k", hd) + rows(f"{b}.v", hd)),
                      (TensorSlice(f"{b}.o.weight", 1, hd),)),
                Layer(f"{b}.qk", d, tuple(rows(f"{b}.q") + rows(f"{b}.k")), (), parent=heads),
                Layer(f"{b}.vo", d, tuple(rows(f"{b}.v")), (TensorSlice(f"{b}.o.weight", 1),), parent=heads),
                Layer(f"{b}.mlp", 4 * d, tuple(rows(f"{b}.fc1")), (TensorSlice(f"{b}.fc2.weight", 1),)),
            ]  # fmt: skip
        inc += rows("ln_f")
        stream = Layer("stream", d, tuple(inc), (*out, TensorSlice("head.weight", 1)))
        return Units((stream, *inner), ("head.weight",) + (("head.bias",) if self.bias else ()))

    def repair_points(self) -> tuple[Affine, ...]:
        """Every LayerNorm output and the MLP's hidden preactivations."""
        pts = []
        for i in range(len(self.blocks)):
            pts += [_affine(f"blocks.{i}.ln1", -1, True), _affine(f"blocks.{i}.ln2", -1, True),
                    _affine(f"blocks.{i}.fc1", -1, self.bias)]  # fmt: skip
        return (*pts, _affine("ln_f", -1, True))


VGG16_CHANNELS = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)
CONVFC_PLAN = ConvPlan(
    channels=(32, "M", 64, "M", 128, "M"), kernel=5, padding=2, pool=(3, 2), fc=(1000, 1000)
)
MODEL_KINDS = {"mlp", "cnn", "convfc", "vgg16", "resnet", "transformer"}
# The width a model gets when none is given (`isthmus train`, `isthmus subspace --from-scratch`,
# sweep specs): hidden units of an MLP, but a channel multiplier of a resnet (16/32/64 x width)
# and the model dimension of a transformer, where 256 would be far larger than meant.
DEFAULT_WIDTHS = {"resnet": 1, "transformer": 64}


def default_width(kind: str) -> int:
    """The default `width` of model kind `kind` (256 where DEFAULT_WIDTHS does not name it)."""
    return DEFAULT_WIDTHS.get(kind, 256)


def build_model(cfg: ModelConfig, dropout: float = 0.0) -> nn.Module:
    """Instantiate the architecture described by `cfg` (weights from the current torch RNG)."""
    cfg.validate()
    if cfg.kind == "mlp":
        n_in = int(torch.tensor(cfg.input_shape).prod())
        return MLP(n_in, cfg.width, cfg.depth, cfg.num_classes, cfg.bias, dropout)
    if cfg.kind == "transformer":
        n_in = math.prod(cfg.input_shape)
        return Transformer(
            n_in, cfg.width, cfg.depth, cfg.heads, cfg.patch, cfg.num_classes, cfg.bias, dropout
        )
    shape = tuple(cfg.input_shape)
    if len(shape) == 1:  # a flat sequence such as mnist1d: one input channel
        shape = (1, shape[0])
    if cfg.kind == "resnet":
        norm = "batchnorm" if cfg.batchnorm else "layernorm" if cfg.layernorm else "none"
        return ResNet(shape, cfg.width, cfg.depth, cfg.num_classes, cfg.bias, norm, dropout)
    if cfg.kind == "cnn":
        plan = ConvPlan(channels=tuple(cfg.channels))
    elif cfg.kind == "convfc":
        plan = CONVFC_PLAN
    else:  # vgg16
        plan = ConvPlan(channels=VGG16_CHANNELS, fc=(512, 512))
    return ConvNet(shape, plan, cfg.num_classes, cfg.bias, cfg.batchnorm, dropout)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
