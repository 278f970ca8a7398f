import pytest
import torch

from isthmus.errors import IsthmusError
from isthmus.models import ModelConfig, build_model
from isthmus.params import (
    evaluate,
    flatten,
    lerp,
    params_of,
    recompute_bn,
    stack,
    unflatten,
    unstack,
)


def _points(cfg, n):
    return [params_of(build_model(cfg)) for _ in range(n)]


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(kind="mlp", depth=3, width=32, input_shape=(40,)),
        ModelConfig(kind="cnn", channels=(4, "M", 8, "M"), input_shape=(40,)),
    ],
)
def test_batched_evaluation_equals_loop(cfg, small_mnist1d):
    model = build_model(cfg)
    pts = _points(cfg, 7)
    d = small_mnist1d
    v = evaluate(model, pts, d.x_train, d.y_train, strategy="vmap", chunk=3, batch_size=200)
    lo = evaluate(model, pts, d.x_train, d.y_train, strategy="loop")
    auto = evaluate(model, stack(pts), d.x_train, d.y_train)
    for m in (v, auto):
        torch.testing.assert_close(m.loss, lo.loss, atol=1e-6, rtol=1e-6)
        # the logits agree to round-off: at most one near-tie may flip a prediction elsewhere
        torch.testing.assert_close(m.acc, lo.acc, atol=1.0 / len(d.x_train) + 1e-12, rtol=0)
    # and each equals a plain forward pass
    for p, loss in zip(pts, lo.loss, strict=True):
        model.load_state_dict(p)
        model.eval()
        with torch.no_grad():
            ref = torch.nn.functional.cross_entropy(model(d.x_train), d.y_train).double()
        assert abs(float(loss) - float(ref)) < 1e-6


def test_flatten_round_trip_and_stack():
    p = params_of(
        build_model(ModelConfig(kind="cnn", channels=(3, "M"), input_shape=(8,), batchnorm=True))
    )
    q = unflatten(flatten(p), p)
    assert all(torch.equal(p[k], q[k]) for k in p)
    assert all(
        torch.equal(a[k], b[k])
        for a, b in zip(unstack(stack([p, q])), [p, q], strict=True)
        for k in p
    )
    with pytest.raises(IsthmusError):
        unflatten(torch.zeros(3), p)


def test_lerp_endpoints_exact():
    cfg = ModelConfig(kind="mlp", depth=2, width=5, input_shape=(3,))
    a, b = _points(cfg, 2)
    assert all(torch.equal(lerp(a, b, 0.0)[k], a[k]) for k in a)
    assert all(torch.equal(lerp(a, b, 1.0)[k], b[k]) for k in a)


def test_batchnorm_policy_forgets_old_statistics_and_is_what_evaluate_uses():
    """The policy's statistics depend only on the weights and the data, never on stale stats."""
    cfg = ModelConfig(
        kind="cnn", channels=(4, "M"), input_shape=(1, 12), batchnorm=True, num_classes=3
    )
    model = build_model(cfg)
    x = torch.randn(300, 1, 12)
    y = torch.randint(0, 3, (300,))
    p = params_of(model)
    stale = {k: (v + 3.0 if "running" in k else v) for k, v in p.items()}
    a, b = recompute_bn(model, p, x), recompute_bn(model, stale, x)
    m0 = evaluate(model, [stale], x, y, bn_x=x)
    for k, v in params_of(model).items():  # recompute_bn and evaluate leave the module as it was
        assert torch.equal(v, p[k]), k
    for k in p:
        if "running" in k:
            assert torch.equal(a[k], b[k])
            assert not torch.equal(a[k], p[k])
    m1 = evaluate(model, [stale], x, y, bn_x=x)
    assert torch.equal(m0.loss, m1.loss)
    model.load_state_dict(a)
    model.eval()
    with torch.no_grad():
        ref = torch.nn.functional.cross_entropy(model(x), y)
    assert abs(float(m1.loss[0]) - float(ref)) < 1e-6


def test_regression_loss_batched_equals_loop():
    cfg = ModelConfig(kind="mlp", depth=3, width=6, input_shape=(4,), num_classes=2)
    model = build_model(cfg)
    pts = _points(cfg, 3)
    x, y = torch.randn(20, 4), torch.randn(20, 2)
    v = evaluate(model, pts, x, y, loss="mse", strategy="vmap")
    lo = evaluate(model, pts, x, y, loss="mse", strategy="loop")
    torch.testing.assert_close(v.loss, lo.loss, atol=1e-6, rtol=1e-6)
    assert torch.isnan(v.acc).all()


def test_loop_leaves_module_state_and_other_dtypes_agree(small_mnist1d, monkeypatch):
    """The loop copies points into the module and restores it; float64 points (which cannot be
    copied into a float32 module) go through functional_call; tiny stacking groups change nothing."""
    import isthmus.params as params_mod

    cfg = ModelConfig(kind="mlp", depth=2, width=16, input_shape=(40,))
    model = build_model(cfg)
    own = params_of(model)
    pts = _points(cfg, 5)
    d = small_mnist1d
    lo = evaluate(model, pts, d.x_train, d.y_train, strategy="loop", batch_size=70)
    for k, v in params_of(model).items():
        assert torch.equal(v, own[k]), k
    wide = [{k: v.double() for k, v in p.items()} for p in pts]
    lo64 = evaluate(model, wide, d.x_train, d.y_train, strategy="loop")
    torch.testing.assert_close(lo64.loss, lo.loss, atol=1e-5, rtol=1e-5)
    # limit 1: every point scored batch by batch; 2 points' outputs: stacks of two (P = 5)
    for limit in (1, 2 * len(d.x_train) * 10):
        monkeypatch.setattr(params_mod, "STACK_LIMIT", limit)
        one = evaluate(model, pts, d.x_train, d.y_train, strategy="loop", batch_size=70)
        torch.testing.assert_close(one.loss, lo.loss, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(one.acc, lo.acc, atol=1.0 / len(d.x_train) + 1e-12, rtol=0)


def test_image_nets_evaluate_like_a_plain_forward():
    """2-D convolutions run channels_last on CPU: same numbers as a plain NCHW forward pass."""
    cfg = ModelConfig(kind="cnn", channels=(4, "M", 8, "M"), input_shape=(3, 8, 8), num_classes=10)
    model = build_model(cfg).eval()
    pts = _points(cfg, 3)
    x, y = torch.randn(50, 3, 8, 8), torch.randint(0, 10, (50,))
    m = evaluate(model, pts, x, y, strategy="loop", batch_size=20)
    for p, loss, acc in zip(pts, m.loss, m.acc, strict=True):
        model.load_state_dict(p)
        with torch.no_grad():
            out = model(x)
        ref = torch.nn.functional.cross_entropy(out, y).double()
        assert abs(float(loss) - float(ref)) < 1e-6
        assert abs(float(acc) - float((out.argmax(1) == y).double().mean())) <= 1.0 / len(y) + 1e-12
