"""Subspace benchmarks (not tests): the cost of training and evaluating a complex joining nets.

For an mnist1d MLP (depth 3, width 256) and the 1-D CNN (32,M,64,M,64,M), untrained random nets
(timings do not depend on the values), a complex of 5 solutions and 2 connectors (`subspace.star`):
  (i)  one training epoch of the complex (`paths.fit.fit_family` with `subspace.join`'s defaults:
       batch 128, one draw per minibatch as Benton et al. 2021, the volume term 1e-6 every 16th
       step; and without the volume term) vs one plain training epoch of a single net on the same
       minibatches (module parameters, SGD with momentum, forward/backward/step, nothing else);
       goal: ratio complex / plain <= 1.3. Both run `--epochs` epochs per timed call, divided by
       that number: a fit's set-up (the controls laid out, the module copied, the fixed block of
       the Gram matrix), paid once per fit of 200 epochs, is spread as in a real fit; it is
       printed apart (a one-epoch fit minus one epoch);
  (ii) evaluating 256 uniform samples of the complex on the training split: `complex.points` +
       one batched `params.evaluate` call vs a plain loop (each sample built as sum_i w_i v_i,
       loaded into the module, forward, cross-entropy); goal: ratio loop / isthmus >= 1.0 on CPU
       (>= 10 on a GPU). The two must agree (max |loss difference| printed).
Best of `--repeat` alternating runs, measured in this process. `--quick` shrinks everything to
check that the script runs; the real measurement is run by hand:

    OMP_NUM_THREADS=2 python benchmarks/bench_subspace.py [--device cuda] [--out bench.json]
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from isthmus.data import load
from isthmus.io import write_json
from isthmus.models import ModelConfig, build_model
from isthmus.params import evaluate, params_of
from isthmus.paths.fit import fit_family
from isthmus.seeding import generator
from isthmus.subspace import star
from isthmus.subspace.join import JOIN_FIT, VOLUME


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def race(fns, dev: torch.device, repeat: int) -> list[float]:
    """Best-of-`repeat` seconds of each function, alternating (load drifts hit all alike)."""
    for fn in fns:  # warm-up
        fn()
    best = [math.inf] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            sync(dev)
            t0 = time.perf_counter()
            fn()
            sync(dev)
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def plain_epoch(model: torch.nn.Module, x, y, batch: int, seed: int, epochs: int = 1) -> None:
    """`epochs` epochs of minibatch SGD on the module's own parameters."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    for e in range(epochs):
        order = torch.randperm(len(x), generator=generator(seed, e, 5)).to(x.device)
        for b in range(math.ceil(len(x) / batch)):
            idx = order[b * batch : (b + 1) * batch]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


@torch.no_grad()
def plain_samples(model: torch.nn.Module, vertices, weights, x, y) -> list[float]:
    out = []
    for w in weights.tolist():
        p = {k: sum(wi * v[k] for wi, v in zip(w, vertices, strict=True)) for k in vertices[0]}
        model.load_state_dict(p)
        out.append(float(F.cross_entropy(model(x), y)))
    return out


def bench(kind: str, cfg: ModelConfig, data, dev, samples: int, repeat: int, E: int) -> dict:
    nets = []
    for s in range(7):
        torch.manual_seed(s)
        nets.append({k: v.to(dev) for k, v in params_of(build_model(cfg)).items()})
    model = build_model(cfg).to(dev)
    cx, flat = star(nets[:5], nets[5:], volume=VOLUME), star(nets[:5], nets[5:])
    fc = replace(JOIN_FIT, epochs=E, batch_size=128, lr=0.01)  # one draw per step, lazy volume
    x, y = data.x_train, data.y_train
    single = build_model(cfg).to(dev)
    t_cx, t_flat, t_plain, t_one = race(
        [
            lambda: fit_family(model, cx, data, fc, progress=False),
            lambda: fit_family(model, flat, data, fc, progress=False),
            lambda: plain_epoch(single, x, y, 128, 0, E),
            lambda: fit_family(model, cx, data, replace(fc, epochs=1), progress=False),
        ],
        dev,
        repeat,
    )
    t_cx, t_flat, t_plain = t_cx / E, t_flat / E, t_plain / E
    setup = t_one - t_cx
    w = cx.sample_weights(samples, generator(0, 0, 83))
    model.eval()
    t_loop, t_isth = race(
        [
            lambda: plain_samples(model, cx.vertices, w, x, y),
            lambda: evaluate(model, cx.points(w), x, y),
        ],
        dev,
        repeat,
    )
    diff = max(
        abs(a - b)
        for a, b in zip(
            plain_samples(model, cx.vertices, w, x, y),
            evaluate(model, cx.points(w), x, y).loss.tolist(),
            strict=True,
        )
    )
    row = {
        "model": kind,
        "device": str(dev),
        "epoch_complex_s": t_cx,
        "epoch_plain_s": t_plain,
        "epoch_ratio": t_cx / t_plain,
        "epoch_complex_no_volume_s": t_flat,
        "epoch_ratio_no_volume": t_flat / t_plain,
        "epochs_per_call": E,
        "fit_setup_s": setup,
        "samples": samples,
        "eval_loop_s": t_loop,
        "eval_isthmus_s": t_isth,
        "eval_ratio": t_loop / t_isth,
        "max_abs_loss_difference": diff,
    }
    print(
        f"{kind}: (i) one epoch: complex {t_cx:.3f} s (without the volume term {t_flat:.3f} s), "
        f"plain {t_plain:.3f} s, ratio {row['epoch_ratio']:.2f} ({row['epoch_ratio_no_volume']:.2f}) "
        f"(goal <= 1.3; a fit's set-up {f'{setup:.3f} s' if setup > 0 else 'below the noise'} once) "
        f"| (ii) {samples} samples: loop {t_loop:.3f} s, "
        f"isthmus {t_isth:.3f} s, ratio loop / isthmus {row['eval_ratio']:.2f} (goal >= 1.0); "
        f"max |loss difference| {diff:.2e}"
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per measurement [5]")
    ap.add_argument("--epochs", type=int, default=4, help="epochs per timed training call [4]")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    dev = torch.device(args.device)
    data = load("mnist1d", device=dev)
    models = {
        "mlp": ModelConfig(kind="mlp", depth=3, width=256, input_shape=data.input_shape),
        "cnn": ModelConfig(kind="cnn", input_shape=data.input_shape),
    }
    samples, repeat = 256, args.repeat
    if args.quick:
        models = {
            "mlp": ModelConfig(kind="mlp", depth=3, width=32, input_shape=data.input_shape),
            "cnn": ModelConfig(kind="cnn", channels=(8, "M"), input_shape=data.input_shape),
        }
        n = 512
        data = replace(data, x_train=data.x_train[:n], y_train=data.y_train[:n])
        samples, repeat, args.epochs = 8, 1, 1
    rows = [bench(k, cfg, data, dev, samples, repeat, args.epochs) for k, cfg in models.items()]
    if args.out:
        write_json(args.out, {"rows": rows})


if __name__ == "__main__":
    main()
