"""`params.eval_plan`: the one rule for evaluation batch size and chunk."""

from __future__ import annotations

import pytest
import torch

from isthmus.errors import IsthmusError
from isthmus.models import ModelConfig, build_model
from isthmus.params import (
    activation_bytes,
    eval_plan,
    evaluate,
    evaluate_splits,
    params_of,
    stack,
)
from isthmus.paths import BezierPath, evaluate_path
from isthmus.paths.connect import eval_sizes


def _cnn(bn: bool = False):
    torch.manual_seed(0)
    cfg = ModelConfig(kind="cnn", batchnorm=bn, input_shape=(1, 40), num_classes=10)
    return build_model(cfg), cfg


def _data(n: int = 96):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 40, generator=g), torch.randint(0, 10, (n,), generator=g)


def _param_bytes(model) -> int:
    return sum(
        v.numel() * v.element_size() for v in model.state_dict().values() if v.is_floating_point()
    )


@pytest.mark.parametrize("budget", [1 << 16, 1 << 18, 1 << 20, 1 << 24, 1 << 28])
def test_plan_deterministic_and_within_budget(budget):
    model, _ = _cnn()
    x, _ = _data()
    plan = eval_plan(model, x, budget)
    assert plan == eval_plan(model, x, budget)  # shapes and budget only
    pb, act = _param_bytes(model), activation_bytes(model, x)
    # a quarter of the budget to points (a power of two), a quarter to one batch's activations
    # (two copies of the widest stage), unless a single point or example already exceeds it
    assert plan.chunk & (plan.chunk - 1) == 0 and 1 <= plan.chunk <= 64
    assert plan.chunk == 1 or plan.chunk * pb <= budget // 4
    assert plan.batch_size == 1 or plan.batch_size * 2 * act <= budget // 4
    assert plan.chunk == 64 or 2 * plan.chunk * pb > budget // 4  # the largest that fits
    assert (
        plan.batch_size == len(x)
        or 2 * (plan.batch_size + 1) * act > budget // 4
        or (-(-len(x) // plan.batch_size) > 1)
    )
    # equal batches: the fewest that fit
    parts = -(-len(x) // plan.batch_size)
    assert plan.batch_size == -(-len(x) // parts)
    more = eval_plan(model, x, budget * 4)
    assert more.batch_size >= plan.batch_size and more.chunk >= plan.chunk


def test_plan_of_the_benchmark_nets():
    """convfc on 2,000 CIFAR-shaped images (widest stage: the first convolution, 3x32x32 in and
    32x32x32 out, 143,360 bytes an example): 4 points a call (a quarter of 256 MiB over 9.7 MB a
    point, rounded down to a power of two), 18 batches of 112 (CPU_BATCH_BYTES, 32 MiB, over two
    copies of the widest stage fits 117); an MLP on few features: everything at once, 64 points;
    the mnist1d CNN: 2 batches of 2,000 on CPU (the cap), one batch on an accelerator."""
    convfc = build_model(ModelConfig(kind="convfc", input_shape=(3, 32, 32), num_classes=10))
    x = torch.zeros(2000, 3, 32, 32)
    assert activation_bytes(convfc, x) == (3 + 32) * 32 * 32 * 4
    assert eval_plan(convfc, x, 256 << 20) == eval_plan(convfc, x)
    assert (eval_plan(convfc, x).batch_size, eval_plan(convfc, x).chunk) == (112, 4)
    assert eval_plan(convfc, x[:200]).batch_size == 100  # two equal batches
    mlp = build_model(ModelConfig(kind="mlp", depth=3, width=256, input_shape=(40,)))
    plan = eval_plan(mlp, torch.zeros(4000, 40))
    assert (plan.batch_size, plan.chunk) == (4000, 64)
    cnn = build_model(ModelConfig(kind="cnn", input_shape=(1, 40)))
    assert eval_plan(cnn, torch.zeros(4000, 1, 40)).batch_size == 2000
    # off CPU (here the meta device, which has no cache to fit), a quarter of the budget
    meta, on_meta = torch.zeros(4000, 1, 40, device="meta"), cnn.to("meta")
    assert 2 * 4000 * activation_bytes(on_meta, meta) <= (256 << 20) // 4
    assert eval_plan(on_meta, meta, 256 << 20, strategy="loop").batch_size == 4000
    with pytest.raises(IsthmusError, match="budget"):
        eval_plan(mlp, torch.zeros(10, 40), 0)


@pytest.mark.parametrize("bn", [False, True])
def test_defaults_equal_the_planned_explicit_settings(bn):
    model, cfg = _cnn(bn)
    x, y = _data()
    pts = stack([params_of(build_model(cfg)) for _ in range(5)])
    budget = 1 << 18  # forces several batches and small chunks
    plan = eval_plan(model, x, budget)
    assert plan.batch_size < len(x)
    auto = evaluate(model, pts, x, y, budget_bytes=budget)
    explicit = evaluate(model, pts, x, y, batch_size=plan.batch_size, chunk=plan.chunk)
    assert torch.equal(auto.loss, explicit.loss) and torch.equal(auto.acc, explicit.acc)
    full = eval_plan(model, x)
    auto = evaluate(model, pts, x, y)
    explicit = evaluate(model, pts, x, y, batch_size=full.batch_size, chunk=full.chunk)
    assert torch.equal(auto.loss, explicit.loss)


def test_path_defaults_equal_explicit():
    from isthmus.data import Dataset

    model, cfg = _cnn()
    x, y = _data()
    data = Dataset("t", x[:64], y[:64], x[64:], y[64:], 10, "classification", (1, 40))
    a, bend, b = (params_of(build_model(cfg)) for _ in range(3))
    path = BezierPath(a, b, [bend])
    batch, chunk = eval_sizes(model, data.x_train)
    assert batch is None and chunk == eval_plan(model, data.x_train).chunk
    auto = evaluate_path(model, path, data, points=7)
    tr = eval_plan(model, data.x_train).batch_size
    te = eval_plan(model, data.x_test).batch_size
    assert tr == 64 and te == 32  # small data: all at once per split
    explicit = evaluate_path(model, path, data, points=7, batch_size=64, chunk=chunk)
    assert auto.train_loss == explicit.train_loss and auto.test_loss == explicit.test_loss
    s = evaluate_splits(model, path.points(torch.tensor([0.5], dtype=torch.float64)), data)
    assert s[0][0] == auto.train_loss[3]
