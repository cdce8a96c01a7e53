"""`sydes import-reference`: reference checkpoints -> SyDES Edge checkpoints, at tiny size.

A tiny reference-style state dict is made by building our model from the importer's own config and
renaming its keys back to the reference's; its key set is checked against the real key list
(../shared/sydes-reference-keys.tsv) with the layer counts scaled down, and the rename of the real
key list is checked to be a bijection onto the reference preset's keys (shapes included).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sdk.errors import CheckpointError, ConfigError

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
yaml = pytest.importorskip("yaml")

from safetensors.torch import save_file  # noqa: E402

from sdk.cli import main as cli_main  # noqa: E402
from training.reference_import import (  # noqa: E402
    REFERENCE_IMAGE_DECODER_BLOCKS,
    ClipSource,
    clip_config_dicts,
    import_reference,
    load_reference_weights,
    read_clip_source,
    read_reference_yaml,
    reference_sydes_config,
    reference_to_sydes_key,
    sydes_to_reference_key,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
KEYS_TSV = SHARED / "sydes-reference-keys.tsv"
CLIP_JSON = SHARED / "sydes-reference-clip-config.json"
TINY = {"vision": dict(hidden=32, layers=2, heads=4, image=32, patch=8), "text": dict(hidden=24, layers=2, heads=4)}


# --- tiny CLIP folder + reference YAML ----------------------------------------------------------------
def _bytes_to_unicode() -> list[str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_clip_dir(root: Path) -> Path:
    """A tiny HF CLIP folder: CLIPModel config.json + a byte-level vocab.json + merges.txt."""
    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars] + ["at</w>", "<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    v, t = TINY["vision"], TINY["text"]
    config = {
        "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 16,
        "vision_config": {"hidden_size": v["hidden"], "intermediate_size": 2 * v["hidden"],
                          "num_hidden_layers": v["layers"], "num_attention_heads": v["heads"],
                          "image_size": v["image"], "patch_size": v["patch"], "hidden_act": "quick_gelu"},
        "text_config": {"hidden_size": t["hidden"], "intermediate_size": 2 * t["hidden"],
                        "num_hidden_layers": t["layers"], "num_attention_heads": t["heads"],
                        "vocab_size": len(vocab), "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                        "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
                        "pad_token_id": 1},
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config))
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\na t</w>\n")
    return root


def reference_yaml(**over) -> dict:
    """A reference-style training config (the reference's configs/*.yaml layout), tiny sizes."""
    d = {
        "model": {
            "image_encoder_path": "tiny-clip", "text_encoder_path": "tiny-clip",
            "image_decoder": {"layers": 2, "nhead": 4, "embed_dim": 16, "mask_ratio": 0.75, "mlp_ratio": 4.0},
            "text_decoder": {"pretrained_path": None, "layers": 2, "nhead": 4, "embed_dim": TINY["vision"]["hidden"],
                             "mlp_ratio": 4.0, "context_length": 76, "output_dim": 20},
            "num_labels": 6, "latent_dim": 16,
            "freeze_text_encoder": False, "freeze_text_decoder": False, "freeze_image_encoder": True,
            "freeze_image_decoder": True, "freeze_aggregator": True,
        },
        "data": {"data_name": "MSED", "root_path": "data/MSED", "label_type": "emotion"},
        "training": {"stage": "finetune", "num_epochs": 50, "batch_size": 32,
                     "loss_weight": {"itc": 0.4, "cs": 0.0, "cf": 0.0, "recon": 0.0, "cls": 1.0}},
    }
    for path, value in over.items():  # "model.num_labels" -> value
        node = d
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return d


@pytest.fixture()
def setup(tmp_path):
    """(clip_dir, yaml_path, reference state dict) for a tiny emotion model."""
    from training.model import SyDES

    clip_dir = write_clip_dir(tmp_path / "clip")
    yaml_path = tmp_path / "finetune.yaml"
    yaml_path.write_text(yaml.safe_dump(reference_yaml()))
    cfg = reference_sydes_config(read_reference_yaml(yaml_path), read_clip_source(clip_dir))
    torch.manual_seed(0)
    model = SyDES(cfg)
    # random values everywhere (not the init's zeros/ones) so that any mix-up shows
    ref_sd = {sydes_to_reference_key(k): torch.randn(v.shape) for k, v in model.state_dict().items()}
    return clip_dir, yaml_path, ref_sd


def _save(sd: dict, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def _inputs(cfg, batch: int = 2):
    g = torch.Generator().manual_seed(1)
    s = cfg.image_size
    ids = torch.randint(0, int(cfg.text.config["vocab_size"]) - 2, (batch, 77), generator=g)
    mask = torch.zeros(batch, 77, dtype=torch.long)
    for i, n in enumerate((7, 12)[:batch]):
        mask[i, :n] = 1
    return dict(input_ids=ids, attention_mask=mask,
                global_view=torch.randn(batch, 3, s, s, generator=g),
                tiles=torch.randn(batch, 4, 3, s, s, generator=g))


# --- the key mapping against the real reference key list ----------------------------------------------
def _tsv() -> dict[str, list[int]]:
    if not KEYS_TSV.is_file():
        pytest.skip(f"{KEYS_TSV} not found")
    rows = [line.split("\t") for line in KEYS_TSV.read_text().splitlines()[1:] if line.strip()]
    return {r[0]: json.loads(r[1]) for r in rows}


def test_real_reference_keys_rename_bijectively_onto_reference_preset():
    from training.model import SyDES
    from training.presets import reference

    keys = _tsv()
    assert len(keys) == 887
    with torch.device("meta"):
        model = SyDES(reference(tasks=("sentiment",)))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    renamed = {reference_to_sydes_key(k, "sentiment"): shape for k, shape in keys.items()}
    assert None not in renamed
    assert len(renamed) == len(keys)  # injective
    assert set(renamed) == set(ours)  # onto
    assert {k: s for k, s in renamed.items() if ours[k] != s} == {}  # and the shapes agree
    assert all(sydes_to_reference_key(reference_to_sydes_key(k, "sentiment")) == k for k in keys)


def test_tiny_reference_keys_follow_the_real_key_pattern(setup):
    """The tiny state dict has exactly the real key list with the layer counts scaled down."""
    _, _, ref_sd = setup
    n_v, n_t = TINY["vision"]["layers"], TINY["text"]["layers"]
    counts = {r"(image_encoder\.vision_model\.encoder\.layers)\.(\d+)\.": n_v,
              r"(text_encoder\.text_model\.encoder\.layers)\.(\d+)\.": n_t,
              r"(text_decoder\.(?:resblocks|cross_attn))\.(\d+)\.": 2,
              r"(image_decoder\.decoder_blocks)\.(\d+)\.": REFERENCE_IMAGE_DECODER_BLOCKS}
    expected = set()
    for k in _tsv():
        keep = True
        for pattern, n in counts.items():
            m = re.search(pattern, k)
            if m and int(m.group(2)) >= n:
                keep = False
        if keep:
            expected.add(k)
    assert set(ref_sd) == expected
    assert ref_sd["proj2.mlp.3.weight"].shape == (6, 10)  # emotion: 6 labels; output_dim 20 // 2


def test_config_follows_reference_yaml_and_quirks(setup):
    clip_dir, yaml_path, _ = setup
    cfg = reference_sydes_config(read_reference_yaml(yaml_path), read_clip_source(clip_dir))
    assert cfg.preset == "reference" and list(cfg.tasks) == ["emotion"]
    assert cfg.tasks["emotion"] == ["happiness", "sad", "neutral", "disgust", "anger", "fear"]
    assert cfg.image_decoder.blocks == 8  # the YAML says 2: the reference always builds 8
    assert (cfg.decoder.width, cfg.decoder.layers, cfg.decoder.heads, cfg.decoder.output_dim) == (32, 2, 4, 20)
    assert (cfg.image_decoder.dim, cfg.image_decoder.heads, cfg.latent_dim) == (16, 4, 16)
    assert cfg.vision.config["image_size"] == 32 and cfg.preprocess["global_size"] == 32
    assert cfg.tokenizer.kind == "clip" and cfg.tokenizer.max_length == 77
    assert cfg.vision.pretrained is None and cfg.text.pretrained is None


def test_reference_size_yaml_and_clip_config_give_the_reference_preset():
    """The real CLIP ViT-B/16 config + a reference-size YAML -> exactly presets.reference(sentiment)."""
    from training.presets import reference

    if not CLIP_JSON.is_file():
        pytest.skip(f"{CLIP_JSON} not found")
    vision, text = clip_config_dicts(json.loads(CLIP_JSON.read_text()))
    y = reference_yaml(**{
        "data.label_type": "sentiment", "model.num_labels": 3, "model.latent_dim": 512,
        "model.image_decoder": {"layers": 4, "nhead": 8, "embed_dim": 512, "mask_ratio": 0.75, "mlp_ratio": 4.0},
        "model.text_decoder": {"pretrained_path": "coca.pt", "layers": 12, "nhead": 12, "embed_dim": 768,
                               "mlp_ratio": 4.0, "context_length": 76, "output_dim": 512}})
    cfg = reference_sydes_config(y, ClipSource(vision, text, tokenizer_json=""))
    assert cfg.to_dict() == reference(tasks=("sentiment",)).to_dict()


# --- the import, end to end through the CLI -----------------------------------------------------------
def test_import_through_cli_round_trips_weights_and_logits(setup, tmp_path):
    from sdk.tokenizer import Tokenizer
    from training.model import SyDES

    clip_dir, yaml_path, ref_sd = setup
    weights = _save(ref_sd, tmp_path / "model.safetensors")
    out = tmp_path / "imported"
    argv = ["import-reference", str(weights), "--config", str(yaml_path), "--clip", str(clip_dir), "-o", str(out)]
    assert cli_main(argv) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]

    loaded = SyDES.from_pretrained(out).eval()
    sd = loaded.state_dict()
    assert len(sd) == len(ref_sd)
    for k, v in ref_sd.items():
        assert torch.equal(sd[reference_to_sydes_key(k, "emotion")], v), k

    fresh = SyDES(loaded.config).eval()
    fresh.load_state_dict({reference_to_sydes_key(k, "emotion"): v for k, v in ref_sd.items()}, strict=True)
    x = _inputs(loaded.config)
    with torch.no_grad():
        a, b = loaded(**x), fresh(**x)
    assert list(a) == ["emotion"] and a["emotion"].shape == (2, 6)
    assert torch.equal(a["emotion"], b["emotion"])

    tok = Tokenizer.from_file(out / "tokenizer.json", max_length=77, kind="clip")
    ids, mask = tok.encode_batch(["a cat"])
    vocab = json.loads((clip_dir / "vocab.json").read_text())
    assert ids[0, 0] == vocab["<|startoftext|>"] and ids[0, int(mask[0].sum()) - 1] == vocab["<|endoftext|>"]
    assert vocab["at</w>"] in ids[0].tolist()  # the merge from merges.txt is applied

    # an existing output is not replaced without --overwrite
    assert cli_main(argv) == 1
    assert cli_main([*argv, "--overwrite"]) == 0


def test_torch_state_dict_weights_are_accepted(setup, tmp_path):
    from training.model import SyDES

    clip_dir, yaml_path, ref_sd = setup
    weights = tmp_path / "pytorch_model.bin"
    torch.save({k: v.half() for k, v in ref_sd.items()}, weights)  # fp16 on disk: cast losslessly to fp32
    out = import_reference(weights, yaml_path, clip_dir, tmp_path / "ck")
    sd = SyDES.from_pretrained(out).state_dict()
    k = "base_model.ln4_post.weight"
    assert sd["ln4_post.weight"].dtype == torch.float32
    assert torch.equal(sd["ln4_post.weight"], ref_sd[k].half().float())


# --- refusals -----------------------------------------------------------------------------------------
def _run(tmp_path, clip_dir, yaml_path, sd):
    weights = _save(sd, tmp_path / "w.safetensors")
    return import_reference(weights, yaml_path, clip_dir, tmp_path / "out")


def test_extra_key_is_refused(setup, tmp_path, capsys):
    clip_dir, yaml_path, ref_sd = setup
    sd = dict(ref_sd, **{"base_model.bogus.weight": torch.zeros(3), "extra_top_level": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"2 unmapped key\(s\).*base_model\.bogus\.weight.*extra_top_level"):
        _run(tmp_path, clip_dir, yaml_path, sd)
    assert not (tmp_path / "out").exists()
    # the same through the CLI: exit status 1 and the reason on stderr
    weights = _save(sd, tmp_path / "w.safetensors")
    rc = cli_main(["import-reference", str(weights), "--config", str(yaml_path), "--clip", str(clip_dir),
                   "-o", str(tmp_path / "out")])
    assert rc == 1
    assert "unmapped key(s) in the checkpoint: base_model.bogus.weight" in capsys.readouterr().err


def test_missing_key_is_refused(setup, tmp_path):
    clip_dir, yaml_path, ref_sd = setup
    sd = {k: v for k, v in ref_sd.items() if k not in ("base_model.ln4_post.bias", "proj1.mlp.0.weight")}
    with pytest.raises(CheckpointError, match=r"2 missing key\(s\) the model needs") as ei:
        _run(tmp_path, clip_dir, yaml_path, sd)
    assert "base_model.ln4_post.bias" in str(ei.value) and "proj1.mlp.0.weight" in str(ei.value)


def test_wrong_shape_is_refused(setup, tmp_path):
    clip_dir, yaml_path, ref_sd = setup
    sd = dict(ref_sd)
    sd["proj2.mlp.3.weight"] = torch.zeros(3, 10)  # a sentiment head under an emotion config
    sd["base_model.text_decoder.text_projection"] = torch.zeros(32, 21)
    with pytest.raises(CheckpointError, match=r"2 shape mismatch\(es\)") as ei:
        _run(tmp_path, clip_dir, yaml_path, sd)
    msg = str(ei.value)
    assert "base_model.text_decoder.text_projection: checkpoint [32, 21] vs model [32, 20]" in msg
    assert "proj2.mlp.3.weight: checkpoint [3, 10] vs model [6, 10]" in msg


def test_every_problem_is_listed_at_once(setup, tmp_path):
    clip_dir, yaml_path, ref_sd = setup
    sd = dict(ref_sd)
    sd.pop("logit_scale")
    sd["base_model.nope"] = torch.zeros(1)
    sd["temperature"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match=r"(?s)unmapped.*base_model\.nope.*missing.*logit_scale.*shape.*temperature"):
        _run(tmp_path, clip_dir, yaml_path, sd)


@pytest.mark.parametrize("over, match", [
    ({"data.label_type": "humour"}, r"unknown data\.label_type 'humour'; valid: sentiment, emotion, desire"),
    ({"model.num_labels": 3}, r"model\.num_labels = 3 but task 'emotion' has 6 labels"),
    ({"model.text_decoder.embed_dim": 48}, r"embed_dim = 48 differs from the CLIP vision width 32"),
    ({"model.latent_dim": "wide"}, r"model\.latent_dim = 'wide' is not a valid int"),
])
def test_bad_reference_config_is_refused(setup, tmp_path, over, match):
    clip_dir, _, ref_sd = setup
    yaml_path = tmp_path / "bad.yaml"
    yaml_path.write_text(yaml.safe_dump(reference_yaml(**over)))
    with pytest.raises(ConfigError, match=match):
        _run(tmp_path, clip_dir, yaml_path, ref_sd)


def test_unreadable_or_malformed_inputs_are_refused(setup, tmp_path):
    clip_dir, yaml_path, _ = setup
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01 definitely not a checkpoint")
    with pytest.raises(CheckpointError, match=r"cannot read .*junk\.bin as a plain torch state dict"):
        load_reference_weights(junk)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"cannot read safetensors weights"):
        load_reference_weights(bad_st)
    with pytest.raises(CheckpointError, match=r"does not exist"):
        load_reference_weights(tmp_path / "absent.safetensors")
    not_yaml = tmp_path / "x.yaml"
    not_yaml.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"not valid YAML"):
        read_reference_yaml(not_yaml)
    not_yaml.write_text("training: {}\n")
    with pytest.raises(ConfigError, match=r"needs `model:` and `data:` sections"):
        read_reference_yaml(not_yaml)
    with pytest.raises(ConfigError, match=r"no CLIP config.json"):
        read_clip_source(tmp_path / "empty_dir_that_is_not_a_hub_id")


class NotATensor:
    """An arbitrary object: torch.load(weights_only=True) must refuse to unpickle it."""


def test_pickle_that_is_not_a_plain_state_dict_is_refused(setup, tmp_path):
    _, _, ref_sd = setup
    evil = tmp_path / "evil.pt"
    torch.save({"base_model.ln4_post.weight": NotATensor()}, evil)
    with pytest.raises(CheckpointError, match=r"weights_only=True.*nothing else is unpickled"):
        load_reference_weights(evil)
    nested = tmp_path / "nested.pt"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "epoch": 3}, nested)
    with pytest.raises(CheckpointError, match=r"not a plain state dict.*'state_dict' \(dict\).*nested training checkpoint"):
        load_reference_weights(nested)
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(CheckpointError, match=r"holds a list, not a state dict"):
        load_reference_weights(listed)


@pytest.mark.slow
def test_reference_size_import_of_all_887_keys(tmp_path):
    """Full size: random weights with every key and shape of the real key list, the real CLIP ViT-B/16
    config and CLIP's real BPE (from open_clip's merges file) -> a checkpoint holding every tensor."""
    from safetensors import safe_open

    from sdk.tokenizer import Tokenizer, clip_vocab_and_merges_from_bpe_gz, open_clip_bpe_path

    if not CLIP_JSON.is_file():
        pytest.skip(f"{CLIP_JSON} not found")
    try:
        vocab, merges = clip_vocab_and_merges_from_bpe_gz(open_clip_bpe_path())
    except ImportError as e:
        pytest.skip(str(e))
    clip_dir = tmp_path / "clip-vit-base-patch16"
    clip_dir.mkdir()
    (clip_dir / "config.json").write_text(CLIP_JSON.read_text())
    (clip_dir / "vocab.json").write_text(json.dumps(vocab))
    (clip_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    y = reference_yaml(**{
        "data.label_type": "sentiment", "model.num_labels": 3, "model.latent_dim": 512,
        "model.image_decoder": {"layers": 4, "nhead": 8, "embed_dim": 512, "mask_ratio": 0.75, "mlp_ratio": 4.0},
        "model.text_decoder": {"pretrained_path": "coca.pt", "layers": 12, "nhead": 12, "embed_dim": 768,
                               "mlp_ratio": 4.0, "context_length": 76, "output_dim": 512}})
    yaml_path = tmp_path / "finetune_sentiment.yaml"
    yaml_path.write_text(yaml.safe_dump(y))
    g = torch.Generator().manual_seed(0)
    ref_sd = {k: torch.randn(shape, generator=g) for k, shape in _tsv().items()}
    weights = _save(ref_sd, tmp_path / "model.safetensors")
    out = tmp_path / "sydes-reference-sentiment"
    assert cli_main(["import-reference", str(weights), "--config", str(yaml_path), "--clip", str(clip_dir),
                     "-o", str(out)]) == 0
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert len(list(f.keys())) == 887
        for k, v in ref_sd.items():
            assert torch.equal(f.get_tensor(reference_to_sydes_key(k, "sentiment")), v), k
    tok = Tokenizer.from_file(out / "tokenizer.json", max_length=77, kind="clip")
    ids, _ = tok.encode_batch(["a photo of a cat"])
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]


# --- the reference's own four config files, as it writes them (comments, every key), tiny sizes -----------
def reference_config_text(stage: str, task: str) -> str:
    """configs/pretrain_msed.yaml or configs/finetune_msed_{task}.yaml of the reference repository, key for key
    and with its comments, with the model sizes of the tiny CLIP folder substituted (width 32, 2 layers)."""
    labels = {"sentiment": 3, "emotion": 6, "desire": 7}
    pre = stage == "pretrain"
    head = '  is_mae_plot: false  # Enable MAE visualization during training\n' \
           '  is_attn_plot: true  # Enable attention visualization during training\n' if pre else ""
    decoder_weights = '    pretrained_path: "checkpoints/mscoco_finetuned_CoCa/open_clip_pytorch_model.bin"  ' \
                      '# Optional pretrained decoder weights\n' if pre else ""
    return f"""# Model architecture configuration
model:
{head}  image_encoder_path: "checkpoints/clip-vit-base-patch16"  # Path to CLIP vision encoder weights
  text_encoder_path: "checkpoints/clip-vit-base-patch16"  # Path to CLIP text encoder weights
  text_decoder:
{decoder_weights}    layers: 2  # Number of transformer layers
    nhead: 4  # Number of attention heads per layer
    embed_dim: {TINY["vision"]["hidden"]}  # Token embedding dimension
    mlp_ratio: 4.0  # MLP expansion ratio
    context_length: 76  # Maximum sequence length
    output_dim: 20  # Output dimension
  image_decoder:
    layers: 8  # Number of transformer layers
    nhead: 4  # Number of attention heads per layer
    embed_dim: 16  # Patch embedding dimension
    mask_ratio: {"0.75  # Ratio of patches to mask for MAE" if pre else "0.00  # Ratio of patches to mask (0=no masking)"}
    mlp_ratio: 4.0  # MLP expansion ratio
  latent_dim: 16  # Shared latent space dimension
  num_labels: {6 if pre else labels[task]}  # Number of output classes
  freeze_text_encoder: false  # Freeze text encoder parameters
  freeze_text_decoder: {"true" if pre else "false"}  # Freeze text decoder parameters
  freeze_image_encoder: {"false" if pre else "true"}  # Freeze image encoder parameters
  freeze_image_decoder: {"false" if pre else "true"}  # Freeze image decoder parameters
  freeze_aggregator: {"false" if pre else "true"}  # Freeze aggregator parameters

# Dataset configuration
data:
  data_name: "MSED"  # Dataset identifier
  root_path: "playground/data/MSED"  # Root directory path
  label_type: "{"sentiment" if pre else task}"  # Type of labels

# Training configuration
training:
  stage: "{stage}"  # Training stage: pretrain or finetune
  loss_weight:
    itc: {"0.50" if pre else "0.40"}  # Image-text contrastive loss weight
    cs: {"0.50" if pre else "0.00"}  # Consistency loss weight (MSE)
    cf: {"0.025" if pre else "0.00"}  # Contrastive feature loss weight (KL divergence)
    recon: {"1.0" if pre else "0"}  # Reconstruction loss weight (MAE)
    cls: {"0.0" if pre else "1.0"}  # Classification loss weight
{"" if pre else "    mdse: 0.00  # Multi-task desire loss weight" + chr(10)}  batch_size: 32  # Training batch size
  eval_batch_size: {32 if pre else 64}  # Evaluation batch size
  eval_strategy: "steps"  # Evaluation strategy: steps or epoch
  eval_steps: 96  # Evaluate every N steps
  save_strategy: "steps"  # Checkpoint saving strategy
  save_steps: 96  # Save checkpoint every N steps
  save_total_limit: 5  # Maximum checkpoints to keep
  logging_strategy: "steps"  # Logging strategy
  logging_steps: 50  # Log metrics every N steps
  load_best_model_at_end: true  # Load best model at end
  metric_for_best_model: "{"eval_loss" if pre else "eval_f1_macro"}"  # Metric for model selection
  greater_is_better: {"false" if pre else "true"}  # Higher metric is better
  output_dir: "output/{stage}/files"  # Output directory
  max_grad_norm: 1.0  # Gradient clipping norm
  num_epochs: 50  # Total training epochs
  learning_rate_map:
    image_encoder: {"5e-6" if pre else "5e-5"}  # Image encoder learning rate
    text_decoder: {"1e-4" if pre else "2e-4"}  # Text decoder learning rate
    others: 1e-4  # Other components learning rate
  fp16: true  # Enable mixed-precision training
  warmup_ratio: {"0.15" if pre else "0.10"}  # Learning rate warmup ratio
  weight_decay: 0.01  # Weight decay coefficient
  gradient_accumulation: 2  # Gradient accumulation steps
  seed: 42  # Random seed for reproducibility
"""


@pytest.mark.parametrize("stage,task,head", [("pretrain", "sentiment", "emotion"), ("finetune", "sentiment", "sentiment"),
                                             ("finetune", "emotion", "emotion"), ("finetune", "desire", "desire")])
def test_import_takes_each_of_the_reference_config_files(tmp_path, stage, task, head):
    from training.model import SyDES

    clip_dir = write_clip_dir(tmp_path / "clip")
    yaml_path = tmp_path / f"{stage}_{task}.yaml"
    yaml_path.write_text(reference_config_text(stage, task))
    cfg = reference_sydes_config(read_reference_yaml(yaml_path), read_clip_source(clip_dir))
    assert list(cfg.tasks) == [head]
    assert cfg.image_decoder.mask_ratio == (0.75 if stage == "pretrain" else 0.0)
    torch.manual_seed(0)
    ref_sd = {sydes_to_reference_key(k): torch.randn(v.shape) for k, v in SyDES(cfg).state_dict().items()}
    out = import_reference(_save(ref_sd, tmp_path / "w.safetensors"), yaml_path, clip_dir, tmp_path / "ck")
    loaded = SyDES.from_pretrained(out).eval()
    for k, v in ref_sd.items():
        assert torch.equal(loaded.state_dict()[reference_to_sydes_key(k, head)], v), k
    with torch.no_grad():
        assert loaded(**_inputs(loaded.config))[head].shape == (2, len(cfg.tasks[head]))
