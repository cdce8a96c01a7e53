"""The weight EMA (training.ema, TrainOptions.ema): the average it keeps, the swap, what the trainer saves, the errors."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("training.model")

from sdk.errors import CheckpointError, ConfigError  # noqa: E402
from training.ema import WeightEMA  # noqa: E402
from training.trainer import TrainOptions  # noqa: E402


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    net[0].weight.requires_grad_(False)  # frozen: shared, never shadowed
    return net


def test_average_follows_the_warmup_schedule():
    net = _net()
    ema = WeightEMA(net, 0.9)
    assert "0.weight" not in ema.shadow and set(ema.shadow) == {"0.bias", "1.weight", "1.bias"}
    expect = net[1].weight.detach().clone()
    for i in range(5):
        with torch.no_grad():
            net[1].weight.add_(1.0)
        d = min(0.9, (1 + i) / (10 + i))
        assert ema.factor() == pytest.approx(d)
        ema.update()
        expect = d * expect + (1 - d) * net[1].weight.detach()
    torch.testing.assert_close(ema.shadow["1.weight"], expect)
    assert not torch.allclose(ema.shadow["1.weight"], net[1].weight)


def test_swapped_holds_the_average_and_restores_exactly():
    net = _net()
    ema = WeightEMA(net, 0.5)
    with torch.no_grad():
        net[1].weight.mul_(3.0)
    ema.update()
    raw = {k: v.clone() for k, v in net.state_dict().items()}
    with ema.swapped():
        torch.testing.assert_close(net[1].weight, ema.shadow["1.weight"])
        assert torch.equal(net[0].weight, raw["0.weight"])
    assert all(torch.equal(v, raw[k]) for k, v in net.state_dict().items())


def test_state_round_trip_and_mismatch():
    net = _net()
    ema = WeightEMA(net, 0.8)
    ema.update()
    other = WeightEMA(_net(), 0.5)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.8 and other.updates == 1
    torch.testing.assert_close(other.shadow["1.bias"], ema.shadow["1.bias"])
    with pytest.raises(ConfigError, match="does not match this model's trainable parameters"):
        WeightEMA(torch.nn.Linear(2, 2), 0.8).load_state_dict(ema.state_dict())


@pytest.mark.parametrize("make, match", [
    (lambda: WeightEMA(torch.nn.Linear(2, 2), 1.0), r"decay must be in \(0, 1\)"),
    (lambda: WeightEMA(torch.nn.Linear(2, 2).requires_grad_(False), 0.9), "no trainable parameters"),
    (lambda: TrainOptions(ema=1.5).validate(), r"ema is a decay in \[0, 1\)"),
])
def test_errors(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_recipe_option_error():
    from export.recipe_options import RecipeOptions

    with pytest.raises(ConfigError, match=r"ema is a decay in \[0, 1\)"):
        RecipeOptions(ema=-0.1).validate()


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    from training.synthetic import generate

    return generate(tmp_path_factory.mktemp("syn"), splits={"train": 8, "dev": 4}, seed=0)


def _trainer(syn, out, ema: float):
    from training.data import read_msed
    from training.runner import build_model
    from training.trainer import Trainer

    torch.manual_seed(0)
    model, tok = build_model(preset="tiny_vit_bert")
    opts = TrainOptions(epochs=1, batch_size=2, progress=False, ema=ema, lrs={"other": 1e-2})
    return Trainer(model, read_msed(syn, "train"), read_msed(syn, "dev"), tok, out, opts)


def test_trainer_saves_the_average_as_best_and_resumes_it(syn, tmp_path):
    from safetensors.torch import load_file

    trainer = _trainer(syn, tmp_path / "run", 0.9)
    trainer.fit()  # one epoch: one evaluation, at the end, so best = the final average
    best = load_file(str(tmp_path / "run/best/model.safetensors"))
    last = load_file(str(tmp_path / "run/last/model.safetensors"))  # the raw weights, to resume from
    moved = [n for n in trainer.ema.shadow if not torch.equal(best[n], last[n])]
    assert moved, "best should hold the average, not the raw weights"
    for n, t in trainer.ema.shadow.items():
        torch.testing.assert_close(best[n], t)
    import json

    evals = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if e.get("event") == "eval"]
    assert evals and {"macro_f1", "raw_macro_f1", "raw_dev_loss"} <= set(evals[-1])
    state = torch.load(tmp_path / "run/last/training_state/state.pt", weights_only=True)
    assert state["ema"]["updates"] == trainer.step == 4

    again = _trainer(syn, tmp_path / "run", 0.9)
    assert again.try_resume() and again.ema.updates == 4
    torch.testing.assert_close(again.ema.shadow[moved[0]], trainer.ema.shadow[moved[0]])
    _trainer(syn, tmp_path / "plain", 0.0).fit()
    with pytest.raises(CheckpointError, match="trained without an EMA"):
        _trainer(syn, tmp_path / "plain", 0.9).try_resume()
