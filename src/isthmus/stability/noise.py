"""Noise stability of a ReLU chain (a variant of Arora, Ge, Neyshabur & Zhang 2018, definitions 1-5,
as used by Kuditipudi et al. 2019, section 3; docs/stability.md).

In the notation x^j = relu(z^j), z^j = W_j x^{j-1} + b_j, z^d = f(x), per layer on training data:
  * layer cushion        mu_j     = min_x ||W_j x^{j-1}|| / (||W_j||_F ||x^{j-1}||),  j = 1..d;
  * interlayer cushion   mu_{i,j} = min_x ||J_{i,j} x^i|| / (||J_{i,j}||_F ||x^i||), 1 <= i < j <= d,
    J_{i,j} the Jacobian of the map x^i -> z^j (layers i+1..j) at x^i, so mu_{i,i+1} = mu_{i+1}
    for nets without bias; mu_{i->} = min_j mu_{i,j};
  * activation contraction c = max_{x, j<d} ||z^j|| / ||x^j||;
  * interlayer smoothness rho = min over x and j >= i+2 of ||eta|| ||z^j|| / (||x^i|| ||M_{i,j}(x^i +
    eta) - M_{i,j}(x^i) - J_{i,j} eta||), eta Gaussian with ||eta|| = s ||x^i|| (s = `noise_scale`,
    1 by default; Arora et al. write M(x + eta) - J(x + eta), equal without biases);
  * attenuation: the same eta injected at x^i, relative change ||x~^j - x^j|| / ||x^j|| at every
    later layer j (the output f at j = d), averaged over examples; and the relative output change
    when half of layer i's units are dropped (kept ones x h/|S|), which is noise with ||eta|| =
    ||x^i|| exactly and the event that noise stability is meant to explain.
||J||_F is estimated from jvps with Gaussian probes (E||J g||^2 = ||J||_F^2), or exactly with the
basis vectors (`n_proj=None`); no Jacobian is materialised. The summary epsilon (design: the form of
the paper's noise-stability parameter; the sources we hold do not give its constant) is
    eps_noise = c * d^{3/2} * max_x ||f(x)|| / (sqrt(min_i n_i) * min_{i<d} mu_i mu_{i->}),
n_i the number of entries of x^i: the output change that dropping half of a layer causes, in units
of f, when noise attenuates as the cushions say. It is reported beside the measured changes.

The layers are the model's `layer_maps()` (`isthmus.models.LayerMaps`); for CNNs a layer is conv
(+bias) followed by the max-pools after it, W_j the linear conv operator (its Frobenius norm exact
from the kernel and the padding). BatchNorm nets and models that are no plain chain are refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import jvp

from ..data import Dataset
from ..errors import IsthmusError
from ..models import LayerMaps, require_chain
from ..params import Params
from ..progress import bar
from ..seeding import generator
from .dropout import DropoutLosses
from .results import NoiseStability
from .versions import droppable

EPSILON_FORMULA = "c * d^1.5 * max||f(x)|| / (sqrt(min_i n_i) * min_i mu_i mu_{i->})"
# stream purposes for seeding.generator(seed, layer, purpose)
_SUBSET, _PROBES, _NOISE, _DROPS = 11, 13, 17, 19


def _norms(t: Tensor) -> Tensor:
    """Per-example Euclidean norms (float64), (N,)."""
    return t.flatten(1).double().norm(dim=1)


def _div(num: Tensor, den: Tensor) -> Tensor:
    """num / den, nan where den == 0 (an undefined ratio is left out of min/mean, never 0 or inf)."""
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, math.nan))


def _stat(t: Tensor, how: str) -> float | None:
    t = t[torch.isfinite(t)]
    if t.numel() == 0:
        return None
    return float({"min": t.min, "max": t.max, "mean": t.mean, "median": t.median}[how]())


def jacobian_frobenius_sq(
    fn: Callable[[Tensor], tuple[Tensor, ...]],
    x: Tensor,
    n_proj: int | None,
    g: torch.Generator | None = None,
) -> list[Tensor]:
    """Per-example ||J||_F^2 of each output of a row-wise map `fn` at the batch x, from jvps only.

    n_proj probes g ~ N(0, I): the mean of ||J g||^2 is unbiased, and for singular values s_k its
    variance is 2 sum s_k^4 / n_proj <= 2 ||J||_F^4 / n_proj. n_proj=None: exact, with the basis
    vectors (one jvp per input entry).
    """
    n_in = x[0].numel()
    acc: list[Tensor] | None = None
    steps = range(n_in) if n_proj is None else range(n_proj)
    for k in steps:
        if n_proj is None:
            v = torch.zeros(len(x), n_in, dtype=x.dtype, device=x.device)
            v[:, k] = 1
            v = v.reshape(x.shape)
        else:
            v = torch.randn(x.shape, generator=g, dtype=torch.float64).to(x)
        _, tangents = jvp(fn, (x,), (v,))
        sq = [t.flatten(1).double().pow(2).sum(1) for t in tangents]
        acc = sq if acc is None else [a + b for a, b in zip(acc, sq, strict=True)]
    assert acc is not None
    return acc if n_proj is None else [a / n_proj for a in acc]


def noise_response(model: nn.Module, params: Params, x: Tensor, i: int, eta: Tensor) -> dict:
    """Inject eta at x^i (1 <= i <= d-1) for the raw inputs x and follow it to the output.

    Returns per later layer j = i+1..d (rows) and example (columns): `relative_change` =
    ||x~^j - x^j|| / ||x^j|| (j = d: ||f~ - f|| / ||f||), `residual` = ||M_{i,j}(x^i + eta) -
    M_{i,j}(x^i) - J_{i,j} eta|| (M_{i,j}: x^i -> z^j), `z_norm` = ||z^j||, and `eta_rel` =
    ||eta|| / ||x^i||.
    """
    maps = require_chain(model, "noise stability")
    if not 1 <= i < maps.depth:
        raise IsthmusError(f"noise can be injected at hidden layers 1..{maps.depth - 1}, not {i}")
    with torch.no_grad():
        xi = maps.forward(params, x)[0][i]
    return _response(maps, params, i, xi, eta.to(xi))


def _response(maps: LayerMaps, p: Params, i: int, xi: Tensor, eta: Tensor) -> dict:
    d = maps.depth

    def fn(h: Tensor) -> tuple[Tensor, ...]:
        return tuple(maps.suffix(p, i, h))

    zs, jeta = jvp(fn, (xi,), (eta,))
    zt = fn(xi + eta)
    rel, res, zn = [], [], []
    for k, j in enumerate(range(i + 1, d + 1)):
        a, b = (zs[k], zt[k]) if j == d else (F.relu(zs[k]), F.relu(zt[k]))
        rel.append(_div(_norms(b - a), _norms(a)))
        res.append(_norms(zt[k] - zs[k] - jeta[k]))
        zn.append(_norms(zs[k]))
    return {
        "relative_change": torch.stack(rel),
        "residual": torch.stack(res),
        "z_norm": torch.stack(zn),
        "eta_rel": _div(_norms(eta), _norms(xi)),
    }


def _unit_mask(x: Tensor, kept: Tensor, r: float) -> Tensor:
    """Multiplier for x^i (N, h) or (N, C, ...) that keeps units/channels `kept`, scaled by r."""
    m = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
    m[kept.to(x.device)] = r
    return m.reshape(1, -1, *([1] * (x.dim() - 2)))


def _layer_quantities(maps: LayerMaps, p: Params, xs: list[Tensor], zs: list[Tensor]) -> dict:
    """Layer cushions (min and mean over examples), activation contraction per hidden layer and
    the examples whose x^j is 0 (their ratios are undefined)."""
    cushion, cushion_mean, contraction, dead = [], [], [], []
    for j in range(1, maps.depth + 1):
        fro = maps.frobenius(j, p, xs[j - 1])
        with torch.no_grad():
            ratio = _div(_norms(maps.linear(j, p, xs[j - 1])), fro * _norms(xs[j - 1]))
        cushion.append(_stat(ratio, "min"))
        cushion_mean.append(_stat(ratio, "mean"))
    for j in range(1, maps.depth):
        xn = _norms(xs[j])
        dead.append(int((xn == 0).sum()))
        contraction.append(_stat(_div(_norms(zs[j - 1]), xn), "max"))
    return {
        "layer_cushion": cushion,
        "layer_cushion_mean": cushion_mean,
        "activation_contraction_by_layer": contraction,
        "dead_examples_by_layer": dead,
    }


def _from_layer(
    maps: LayerMaps,
    p: Params,
    i: int,
    xi: Tensor,
    f: Tensor,
    *,
    size: int,
    n_proj: int | None,
    seed: int,
    noise_scale: float,
    dropout_draws: int,
) -> dict:
    """Quantities of noise injected at hidden layer i: interlayer cushions mu_{i,j}, smoothness
    pairs (j >= i+2), attenuation, and the mean output change of dropping half of layer i."""
    d = maps.depth

    def fn(h: Tensor) -> tuple[Tensor, ...]:
        return tuple(maps.suffix(p, i, h))

    _, jx = jvp(fn, (xi,), (xi,))
    fro2 = jacobian_frobenius_sq(fn, xi, n_proj, generator(seed, i, _PROBES))
    inter, smooth = [], []
    for k, j in enumerate(range(i + 1, d + 1)):
        ratio = _div(_norms(jx[k]), fro2[k].sqrt() * _norms(xi))
        inter.append({"i": i, "j": j, "min": _stat(ratio, "min"), "mean": _stat(ratio, "mean")})
    eta = torch.randn(xi.shape, generator=generator(seed, i, _NOISE), dtype=torch.float64).to(xi)
    scale = noise_scale * _div(_norms(xi), _norms(eta)).nan_to_num(0.0)  # ||eta|| = s ||x^i||
    eta = eta * scale.to(xi).reshape(-1, *([1] * (xi.dim() - 1)))
    with torch.no_grad():
        resp = _response(maps, p, i, xi, eta)
    for k, j in enumerate(range(i + 1, d + 1)):
        if j >= i + 2:
            ratio = _div(noise_scale * resp["z_norm"][k], resp["residual"][k])
            smooth.append(
                {"i": i, "j": j, "min": _stat(ratio, "min"), "median": _stat(ratio, "median")}
            )
    change = [noise_scale] + [_stat(resp["relative_change"][k], "mean") for k in range(d - i)]
    changes = []
    g = generator(seed, i, _DROPS)
    for _ in range(dropout_draws):
        kept = torch.randperm(size, generator=g)[: size // 2]
        with torch.no_grad():
            ft = maps.suffix(p, i, xi * _unit_mask(xi, kept, size / len(kept)))[-1]
        changes.append(_div(_norms(ft - f), _norms(f)))
    return {
        "interlayer_cushion": inter,
        "interlayer_smoothness_pairs": smooth,
        "attenuation": {"i": i, "layers": list(range(i, d + 1)), "relative_change": change},
        "dropout_output_change": _stat(torch.cat(changes), "mean") if changes else None,
    }


def _summary(per: list[dict], layer: dict, dims: list[int], d: int) -> tuple[dict, list]:
    """The per-start-layer records gathered, mu_{i->} = min_j mu_{i,j}, c and rho (result fields),
    and the products mu_i mu_{i->} that enter epsilon."""
    inter = [r for q in per for r in q["interlayer_cushion"]]
    smooth = [r for q in per for r in q["interlayer_smoothness_pairs"]]
    atten = [q["attenuation"] for q in per]
    mu_from = [
        min((r["min"] for r in inter if r["i"] == i and r["min"] is not None), default=None)
        for i in range(1, d)
    ]
    cushion, contraction = layer["layer_cushion"], layer["activation_contraction_by_layer"]
    prods = [
        cushion[i - 1] * mu_from[i - 1]
        if cushion[i - 1] is not None and mu_from[i - 1] is not None
        else None
        for i in range(1, d)
    ]
    return {
        "dims": dims,
        "interlayer_cushion": inter,
        "interlayer_cushion_from": mu_from,
        "activation_contraction": max((v for v in contraction if v is not None), default=None),
        "interlayer_smoothness": min(
            (r["min"] for r in smooth if r["min"] is not None), default=None
        ),
        "interlayer_smoothness_pairs": smooth,
        "attenuation": atten,
        "output_relative_change": [a["relative_change"][-1] for a in atten],
        "dropout_output_change": [q["dropout_output_change"] for q in per],
    }, prods


def _epsilon(c: float | None, d: int, max_f: float, dims: list[int], prods: list) -> float:
    """eps_noise of the module docstring; nan where a factor is undefined or not positive."""
    if c is None or not all(v is not None and v > 0 for v in prods):
        return math.nan
    eps = c * d**1.5 * max_f / (math.sqrt(min(dims)) * min(prods))
    return eps if math.isfinite(eps) else math.nan


def noise_stability(
    model: nn.Module,
    params: Params,
    data: Dataset,
    *,
    n_examples: int | None = 256,
    n_proj: int | None = 128,
    seed: int = 0,
    noise_scale: float = 1.0,
    dropout_draws: int = 8,
    progress: bool | None = None,
    batch_size: int | None = None,
) -> NoiseStability:
    """The noise-stability quantities of the module docstring on a seeded training subset.

    Args:
      n_examples: training examples used (None: all). n_proj: Gaussian probes per Jacobian norm
        (None: exact). noise_scale: ||eta|| / ||x^i|| of the injected noise (1 by default).
      dropout_draws: random halves per layer for the measured dropout output change.
      batch_size: examples per forward pass for L(theta) on the whole training split.

    Returns a `NoiseStability`; epsilon = eps_noise (nan where undefined).
    """
    if noise_scale <= 0:
        raise IsthmusError(f"noise_scale must be > 0, got {noise_scale}")
    if n_proj is not None and n_proj < 1:
        raise IsthmusError(f"n_proj must be >= 1 or None (exact), got {n_proj}")
    units, maps = droppable(model, "noise stability")
    d = maps.depth
    base = DropoutLosses(model, params, units, data, batch_size).metrics([params])
    ref = next(iter(params.values()))
    n_all = len(data.x_train)
    n = n_all if n_examples is None else min(int(n_examples), n_all)
    if n < 1:
        raise IsthmusError(f"n_examples must be >= 1, got {n_examples}")
    idx = torch.randperm(n_all, generator=generator(seed, 0, _SUBSET))[:n].sort().values
    x = data.x_train[idx.to(data.x_train.device)].to(ref.device, ref.dtype)
    with torch.no_grad():
        xs, zs = maps.forward(params, x)
    fx = _norms(zs[-1])
    layer = _layer_quantities(maps, params, xs, zs)
    per: list[dict] = []
    for i in bar(range(1, d), progress=progress, desc="noise stability", unit="layer"):
        size = units.layers[i - 1].size
        kw = dict(n_proj=n_proj, seed=seed, noise_scale=noise_scale, dropout_draws=dropout_draws)
        per.append(_from_layer(maps, params, i, xs[i], zs[-1], size=size, **kw))
    dims = [int(xs[i][0].numel()) for i in range(1, d)]
    summary, prods = _summary(per, layer, dims, d)
    search = {
        "seed": seed,
        "n_examples": n,
        "n_proj": n_proj if n_proj is not None else "exact",
        "noise_scale": noise_scale,
        "dropout_draws": dropout_draws,
    }
    max_f = float(fx.max())
    return NoiseStability(
        epsilon=_epsilon(summary["activation_contraction"], d, max_f, dims, prods),
        loss=float(base.loss[0]),
        search=search,
        acc=float(base.acc[0]),
        layers=[la.name for la in units.layers],
        n_examples=n,
        max_output_norm=max_f,
        epsilon_formula=EPSILON_FORMULA,
        **layer,
        **summary,
    )
