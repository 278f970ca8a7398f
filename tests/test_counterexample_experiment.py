"""The counterexample experiment and CLI: every path between the two minimisers leaves the zero
set (the theorem forces a positive maximum), and the searches really run."""

import json

import pytest

from isthmus.cli import main
from isthmus.counterexample import experiment


def test_every_path_between_components_has_positive_loss():
    r = experiment(2, epochs=50, steps=20)
    assert max(r["endpoint_loss"]["counterexample"]) < 1e-20
    assert r["invariant"][0] != r["invariant"][1]
    for name, res in r["counterexample"].items():
        assert res["loss"][0] < 1e-20 and res["loss"][-1] < 1e-20, name
        assert res["max_loss"] > 1e-6, name  # a zero-loss path would contradict the proof
    # the control's ends are exact fits (a local minimum of L-BFGS is retried, not used)
    assert max(r["endpoint_loss"]["ordinary"]) <= 1e-12
    assert all(1 <= n <= 20 for n in r["ordinary_fit_attempts"])


@pytest.mark.e2e
def test_counterexample_cli(tmp_path, capsys):
    assert (
        main(
            [
                "counterexample",
                "--width",
                "2",
                "--epochs",
                "30",
                "--steps",
                "10",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    res = json.loads((tmp_path / "counterexample.json").read_text())
    assert res["h"] == 2 and (tmp_path / "counterexample.png").stat().st_size > 1000
    assert "AutoNEB" in capsys.readouterr().out
    assert main(["counterexample", "--width", "1", "--out", str(tmp_path)]) == 2
