"""The architecture flags shared by the commands that build a net (`isthmus train`, `isthmus
subspace --from-scratch`, `isthmus study`): one definition, so all accept every model kind with the
same options and the same per-kind default width (`models.default_width`; a command may keep its
own MLP width, as the study does)."""

from __future__ import annotations

import argparse

from ._types import bounded, channels

KINDS = ["mlp", "cnn", "convfc", "vgg16", "resnet", "transformer"]


def add_model(p: argparse.ArgumentParser, *, mlp_width: int | None = None) -> None:
    """--model/--depth/--width/--channels/--no-bias/--batchnorm/--layernorm/--heads/--patch.

    `mlp_width`: a command's own default MLP width (`isthmus study`: 128) instead of the
    library's; `model_config` reads it back."""
    from ..models import default_width

    p.add_argument("--model", default="mlp", choices=KINDS, help="architecture [mlp]")
    what = "weight layers of the MLP, blocks per stage (resnet) or blocks (transformer) [3]"
    p.add_argument("--depth", type=bounded(1, 256), default=3, help=what)
    mlp = default_width("mlp") if mlp_width is None else mlp_width
    what = f"MLP hidden units [{mlp}], resnet channel multiplier [1], transformer dimension [64]"
    p.add_argument("--width", type=bounded(1, 65536), default=None, help=what)
    p.set_defaults(mlp_width=mlp_width)
    p.add_argument(
        "--channels",
        type=channels,
        default=(32, "M", 64, "M", 64, "M"),
        help="CNN plan: channels and M (max-pool), comma-separated [32,M,64,M,64,M]",
    )
    p.add_argument("--no-bias", action="store_true", help="no bias terms")
    p.add_argument("--batchnorm", action="store_true", help="BatchNorm after each conv (baselines)")
    p.add_argument("--layernorm", action="store_true", help="resnet: LayerNorm over channels")
    p.add_argument("--heads", type=bounded(1, 65536), default=4, help="transformer heads [4]")
    what = "transformer: input entries per token (mnist1d: 4 gives 10 tokens) [4]"
    p.add_argument("--patch", type=bounded(1, 65536), default=4, help=what)


def model_config(args, data):
    """The `models.ModelConfig` the flags of `add_model` describe, for `data`'s inputs and
    classes, checked (an error names the flag's field and says why)."""
    from ..models import ModelConfig, default_width

    width = args.width
    if width is None:
        own = getattr(args, "mlp_width", None) if args.model == "mlp" else None
        width = default_width(args.model) if own is None else own
    cfg = ModelConfig(
        kind=args.model,
        depth=args.depth,
        width=width,
        channels=args.channels,
        bias=not args.no_bias,
        batchnorm=args.batchnorm,
        input_shape=tuple(data.input_shape),
        num_classes=data.num_classes,
        layernorm=args.layernorm,
        heads=args.heads,
        patch=args.patch,
    )
    cfg.validate("command line")
    return cfg
