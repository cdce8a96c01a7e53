"""Training the image encoder's last layers (TrainOptions.image_tail_blocks): the encoder cut between two layers,
the feature cache before the trained tail, and the errors."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("training.model")

from sdk.errors import ConfigError  # noqa: E402
from training.trainer import TrainOptions  # noqa: E402


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    from training.synthetic import generate

    return generate(tmp_path_factory.mktemp("syn"), splits={"train": 8, "dev": 4}, seed=0)


@pytest.mark.parametrize("preset", ["tiny_clip", "tiny_vit_bert"])
def test_encoder_cut_between_layers_is_exact(preset):
    from training.runner import build_model

    torch.manual_seed(0)
    model, _ = build_model(preset=preset)
    enc = model.image_encoder.eval()
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        for ln in (m for m in enc.modules() if isinstance(m, torch.nn.LayerNorm)):  # not idempotent, as trained ones
            ln.weight.normal_()
            ln.bias.normal_()
        full = enc(x)  # [3, 1+P, D]
        for k in range(enc.num_layers + 1):
            h = enc.encode_layers(enc.embed(x), 0, k)
            assert h.shape == full.shape
            out = enc.encode_from(h.view(1, 3, *h.shape[1:]), torch.full((3,), k))  # any leading dims
            assert out.shape == (1, *full.shape)
            assert torch.allclose(out[0], full, atol=1e-5, rtol=0), (k, (out[0] - full).abs().max())
    with pytest.raises(ConfigError, match=r"layers \[1, 5\) outside its 2 layers"):
        enc.encode_layers(full, 1, 5)
    with pytest.raises(ConfigError, match="mixes image features cut after different layers"):
        enc.encode_from(full, torch.tensor([0, 1, 1]))
    for bad in (0, enc.num_layers):
        with pytest.raises(ConfigError, match=r"image_tail_blocks must be in 1\.\.1"):
            enc.tail_modules(bad)


def test_freezing_keeps_only_the_tail_trainable():
    from training.runner import build_model
    from training.steps import prepare_model_for_stage

    model, _ = build_model(preset="tiny_vit_bert")
    prepare_model_for_stage(model, "finetune", fresh_finetune=False, image_tail_blocks=1)
    trainable = {n for n, p in model.image_encoder.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("vision_model.layers.1.", "vision_model.layernorm.")) for n in trainable)
    assert any(n.startswith("vision_model.layernorm.") for n in trainable)
    prepare_model_for_stage(model, "finetune", fresh_finetune=False)
    assert not any(p.requires_grad for p in model.image_encoder.parameters())


def test_tail_cache_keys_logits_and_dataset(syn, tmp_path):
    from sdk.preprocess import PreprocessConfig
    from training.data import PostDataset, collate, read_msed
    from training.feature_cache import CachedFeatureDataset, FeatureCache
    from training.runner import build_model
    from training.steps import batch_logits

    torch.manual_seed(0)
    model, tok = build_model(preset="tiny_clip")
    model.eval()
    rec = read_msed(syn, "dev")
    pcfg = PreprocessConfig.from_dict(model.config.preprocess)
    out_cache, tail_cache = FeatureCache(tmp_path, model), FeatureCache(tmp_path, model, tail_blocks=1)
    assert (out_cache.layer, tail_cache.layer) == (None, 1)
    assert out_cache.key(rec[0].image) == FeatureCache(tmp_path, model, tail_blocks=0).key(rec[0].image)
    assert tail_cache.key(rec[0].image) != out_cache.key(rec[0].image)
    assert tail_cache.fill(rec, pcfg, batch_size=3) == len(rec) and tail_cache.fill(rec, pcfg) == 0
    plain = PostDataset(rec, tok, pcfg, model.config.task_names)
    cached = CachedFeatureDataset(PostDataset(rec, tok, pcfg, model.config.task_names, with_pixels=False),
                                  tail_cache, rec)
    item = cached[0]
    assert "image_features" not in item and item["image_hidden"].shape[0] == 5 and int(item["image_hidden_layer"]) == 1
    with torch.no_grad():
        a = batch_logits(model, collate([plain[i] for i in range(len(rec))]))
        b = batch_logits(model, collate([cached[i] for i in range(len(rec))]))
    for t in a:
        assert torch.allclose(a[t], b[t], atol=1e-5, rtol=0), (t, (a[t] - b[t]).abs().max())
    # the tail trains: its weights leave the key alone; the frozen layers' weights change it
    key = tail_cache.key(rec[0].image)
    with torch.no_grad():
        model.image_encoder.layers[1].mlp.fc1.weight.add_(1.0)
    assert FeatureCache(tmp_path, model, tail_blocks=1).key(rec[0].image) == key
    assert FeatureCache(tmp_path, model).key(rec[0].image) != out_cache.key(rec[0].image)
    with torch.no_grad():
        model.image_encoder.layers[0].mlp.fc1.weight.add_(1.0)
    assert FeatureCache(tmp_path, model, tail_blocks=1).key(rec[0].image) != key
    with pytest.raises(ConfigError, match="needs image_hidden_layer= and no image_features="):
        model.encode(item["input_ids"][None], item["attention_mask"][None], image_hidden=item["image_hidden"][None])


def test_tail_training_moves_the_tail_alone(syn, tmp_path):
    from training.data import read_msed
    from training.runner import build_model
    from training.trainer import Trainer

    torch.manual_seed(0)
    model, tok = build_model(preset="tiny_vit_bert")
    start = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    opts = TrainOptions(epochs=1, batch_size=4, progress=False, feature_cache=str(tmp_path / "cache"),
                        image_tail_blocks=1, lrs={"image_encoder": 1e-2})
    trainer = Trainer(model, read_msed(syn, "train"), read_msed(syn, "dev"), tok, tmp_path / "run", opts)
    trainer.fit()
    changed = {k for k, v in model.image_encoder.state_dict().items() if not torch.equal(v, start[k])}
    assert changed and all(k.startswith(("vision_model.layers.1.", "vision_model.layernorm.")) for k in changed)


@pytest.mark.parametrize("kw, match", [
    (dict(image_tail_blocks=-1), "image_tail_blocks must be >= 0"),
    (dict(image_tail_blocks=1), "an image_encoder learning rate > 0"),
    (dict(image_tail_blocks=1, stage="pretrain", lrs={"image_encoder": 1e-5}), "needs the finetune stage"),
])
def test_tail_option_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        TrainOptions(**kw).validate()


def test_text_only_model_has_no_tail():
    from training.runner import build_model
    from training.text_model import TextClassifier, TextOnlyConfig

    ref, _ = build_model(preset="tiny_vit_bert")
    model = TextClassifier(TextOnlyConfig(text=ref.config.text, tasks=ref.config.tasks, tokenizer=ref.config.tokenizer))
    model.freeze_image_encoder(True)
    with pytest.raises(ConfigError, match="no image encoder: image_tail_blocks must be 0"):
        model.freeze_image_encoder(True, tail_blocks=1)
