"""`sydes train recipe`: the whole training recipe, end to end and resumable.

Stages (each writes `RUN/stages/<name>.json` when done; a rerun skips finished stages, and a training stage
that was interrupted continues from its own `last/` checkpoint):

    data      read train / dev; hold a stratified slice of train out for selection (never dev);
              learn the label structure (sdk.labels) from the rest of train
    baseline  the text-only model (same text encoder, mean pooling + a linear layer per task)
    features  the frozen image encoder's outputs of every image, once, into the on-disk feature cache
    model     the preset (the image encoder frozen and read from the cache, the text encoder trained)
    <variant> optional candidates for best (warm-text, structure-loss, image-tail, unimodal, joint-head,
              shallow-decoder, text-dropout); <ablation> diagnostics
              (global-only, image-only)
    decoding  per model: independent argmax, joint decoding, joint + prior; chosen on the selection slice
    best      RUN/best/: the candidate (model or a variant) best on the selection slice, with its label
              structure and a model card
    int8      RUN/int8.sydes exported from RUN/best and scored on dev through sdk.Analyzer; likewise
              RUN/baseline-int8.sydes (a text-only bundle) from the baseline (stage baseline-int8)
    report    RUN/report.json and RUN/report.md (every figure on dev, the split nothing was selected on)

Every model reads the text `RecipeOptions.text_fields` / `text_separator` build (default: Title + Caption), and
records it in its checkpoint (config.json's tokenizer section), so the bundle and `sydes analyze` read it so.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from export.recipe_options import (
    BASELINE,
    IMAGE_TAIL_BLOCKS,
    IMAGE_TAIL_LR,
    TEXT_DROPOUT,
    VARIANT_LOSS_WEIGHTS,
    RecipeOptions,
    stratified_split,
)
from sdk.atomic import atomic_write_text
from sdk.errors import ConfigError
from sdk.text_fields import TextFields

log = logging.getLogger(__name__)


class Recipe:
    """One run folder. `run()` executes the stages that are not done yet and returns the report."""

    def __init__(self, data: str | Path, output: str | Path, opts: RecipeOptions | None = None) -> None:
        self.data, self.out = str(data), Path(output)
        self.opts = (opts or RecipeOptions()).validate()
        self.stages = self.out / "stages"
        self.stages.mkdir(parents=True, exist_ok=True)
        self._check_options_match()

    # ---- bookkeeping ----------------------------------------------------------------------------
    def _check_options_match(self) -> None:
        """A resumed run must be the same recipe: the stages already done were computed with its options."""
        f = self.out / "recipe.json"
        mine = {"data": self.data, **json.loads(json.dumps(dataclasses.asdict(self.opts)))}
        mine.pop("progress")
        if f.is_file():
            # a run from before the text fields read the Caption alone, one from before the EMA had none
            theirs = {**TextFields().to_dict(), "ema": 0.0, **json.loads(f.read_text())}
            theirs.pop("progress", None)
            # ablations and the INT8 check add stages; they change nothing that is already done
            additive = ("int8", "ablations", "variants")
            changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k) and k not in additive)
            if changed:
                raise ConfigError(f"{self.out} holds a recipe run with other options ({', '.join(changed)}); "
                                  "use another --output to start afresh")
        atomic_write_text(f, json.dumps(mine, indent=2))

    def _done(self, name: str) -> dict[str, Any] | None:
        f = self.stages / f"{name}.json"
        return json.loads(f.read_text()) if f.is_file() else None

    def _stage(self, name: str, fn) -> dict[str, Any]:
        done = self._done(name)
        if done is not None:
            log.info("recipe: stage %s already done (%.0f s)", name, done.get("seconds", 0))
            return done
        log.info("recipe: stage %s", name)
        t0 = time.perf_counter()
        out = fn()
        out["seconds"] = round(time.perf_counter() - t0, 1)
        atomic_write_text(self.stages / f"{name}.json", json.dumps(out, indent=2, default=float))
        return out

    # ---- data -----------------------------------------------------------------------------------
    def _tasks(self) -> dict[str, list[str]]:
        from training.config import task_labels
        from training.presets import ALL_TASKS

        return task_labels(ALL_TASKS)

    def _records(self) -> tuple[Any, Any, Any]:
        """(fit, select, dev) Records, the split read back from the data stage."""
        from training.data import Records
        from training.runner import read_split

        tasks, fields = self._tasks(), self.opts.text_recipe()
        train = read_split(self.data, "train", None, tasks=tasks, text_fields=fields, limit=self.opts.limit)
        dev = read_split(self.data, "dev", None, tasks=tasks, text_fields=fields, limit=self.opts.limit)
        split = self._done("data")
        if split is None:
            return train, None, dev
        sub = lambda idx, tag: Records([train.examples[i] for i in idx], [], f"{train.source} ({tag})")  # noqa: E731
        return sub(split["fit"], "fit"), sub(split["select"], "select"), dev

    def _data(self) -> dict[str, Any]:
        from sdk.labels import LabelStructure

        tasks = self._tasks()
        train, _, dev = self._records()
        rows = np.array([[e.labels[t] for t in tasks] for e in train.examples])
        fit, select = stratified_split(rows, self.opts.select_fraction, self.opts.seed)
        structure = LabelStructure.from_labels(tasks, rows[fit])  # fit rows only: select is held out
        dev_rows = np.array([[e.labels[t] for t in tasks] for e in dev.examples])
        unseen = int(sum(not structure.contains(r) for r in dev_rows))
        return {"train": len(train), "fit": fit, "select": select, "dev": len(dev),
                "label_structure": structure.to_dict(), "combinations": len(structure.combos),
                "dev_rows_outside_structure": unseen}

    def _structure(self) -> dict[str, Any]:
        return self._done("data")["label_structure"]

    # ---- models ---------------------------------------------------------------------------------
    def _build(self, family: str, variant: str | None = None) -> tuple[Any, Any]:
        """A fresh model of `family` (the preset or the baseline) with the label structure, and its tokenizer;
        `variant="warm-text"`: the text encoder loaded from the baseline's selected checkpoint."""
        import torch

        from training.runner import build_model, load_tokenizer

        torch.manual_seed(self.opts.seed)  # random parts (tiny presets' encoders) identical in every stage
        if family == BASELINE:
            from training.text_model import TextClassifier, TextOnlyConfig, text_only

            if self.opts.preset in ("edge", BASELINE):
                from training.offline import minilm_l6_folder

                cfg = text_only(tuple(self._tasks()), text_pretrained=str(minilm_l6_folder()))
                model = TextClassifier(cfg, load_pretrained=True)
            else:  # the same text encoder as the preset (tests: tiny and random)
                ref, _ = build_model(preset=self.opts.preset)
                cfg = TextOnlyConfig(text=ref.config.text, tasks=self._tasks(), tokenizer=ref.config.tokenizer)
                model = TextClassifier(cfg)
                model.text_encoder.load_state_dict(ref.text_encoder.state_dict())
        else:
            model, _ = build_model(preset=self.opts.preset, tasks=list(self._tasks()))
            if variant == "warm-text":
                from training.checkpoints import load_model

                base = load_model(self.out / "baseline" / "best")
                model.text_encoder.load_state_dict(base.text_encoder.state_dict())
            elif variant == "unimodal":
                model.add_unimodal_heads()
            elif variant == "shallow-decoder":  # the same encoders (the preset's sources), a fresh shallower decoder
                from training.model import SyDES

                c = model.config
                layers = max(1, c.decoder.layers // 2)
                model = SyDES(dataclasses.replace(c, decoder=dataclasses.replace(c.decoder, layers=layers)),
                              load_pretrained=self.opts.preset == "edge")
        model.config.label_structure = self._structure()
        if variant == "joint-head":  # after the table: the head scores its combinations
            model.add_joint_head()
        model.config.tokenizer.set_text_recipe(self.opts.text_recipe())  # recorded in every checkpoint
        return model, load_tokenizer(model.config)

    def _cache_dir(self) -> str:
        from training.offline import cache_dir

        return str(cache_dir() / "features")

    def _features(self) -> dict[str, Any]:
        import torch

        from sdk.preprocess import PreprocessConfig
        from training.feature_cache import FeatureCache

        model, _ = self._build(self.opts.preset)
        cache = FeatureCache(self._cache_dir(), model, dtype=torch.float16)
        pcfg = PreprocessConfig.from_dict(model.config.preprocess)
        fit, select, dev = self._records()
        n = sum(cache.fill(r, pcfg, batch_size=16, progress=self.opts.progress) for r in (fit, select, dev))
        return {"computed": n, "reused": cache.hits, "images": len(fit) + len(select) + len(dev),
                "dtype": "float16", "cache": self._cache_dir()}

    def _train(self, name: str, family: str, ablation: str | None = None, variant: str | None = None
               ) -> dict[str, Any]:
        from training.recipe_report import model_cost
        from training.trainer import Trainer, TrainOptions

        fit, select, dev = self._records()
        if ablation == "image-only":
            fit, select, dev = (r.without_text() for r in (fit, select, dev))
        model, tok = self._build(family, variant)
        uses_images = getattr(model, "uses_images", True)
        baseline = family == BASELINE
        tail = IMAGE_TAIL_BLOCKS if variant == "image-tail" else 0
        lrs = dict(self.opts.baseline_lrs if baseline else self.opts.model_lrs)
        if tail:
            lrs["image_encoder"] = IMAGE_TAIL_LR
        opts = TrainOptions(
            stage="finetune", epochs=self.opts.baseline_epochs if baseline else self.opts.epochs,
            batch_size=self.opts.batch_size, lrs=lrs, image_tail_blocks=tail,
            patience=self.opts.patience, seed=self.opts.seed, ema=self.opts.ema, device=self.opts.device,
            progress=self.opts.progress,
            save_every=10**9, log_every=10, feature_cache=self._cache_dir() if uses_images else None,
            feature_cache_dtype="float16",
            loss_weights=VARIANT_LOSS_WEIGHTS.get(variant or "", {}),
            text_dropout=TEXT_DROPOUT if variant == "text-dropout" else 0.0)
        trainer = Trainer(model, fit, select, tok, self.out / name, opts)
        if ablation == "global-only":
            from training.feature_cache import global_view_only

            trainer.train_ds.transform = trainer.dev_ds.transform = global_view_only
        summary = trainer.fit()
        best = self.out / name / "best"
        probs = {split: self._predict(best, recs, ablation, tail) for split, recs in (("select", select), ("dev", dev))}
        np.savez(self.out / name / "probs.npz", **{f"{s}/{t}": p for s, d in probs.items() for t, p in d.items()})
        return {"checkpoint": str(best), "best_select_macro_f1": summary.get("best"),
                "best_step": summary.get("best_step"), "steps": summary.get("step"),
                "stopped_early": summary.get("stopped_early"), "cost": model_cost(trainer.model),
                **({"image_tail_blocks": tail, "image_tail_lr": IMAGE_TAIL_LR} if tail else {}),
                **({"text_dropout": TEXT_DROPOUT} if variant == "text-dropout" else {})}

    def _predict(self, checkpoint: Path, records: Any, ablation: str | None, tail_blocks: int = 0
                 ) -> dict[str, np.ndarray]:
        """Probabilities {task: [N, C]} of a checkpoint on `records`, image features from the cache (cut before
        the image encoder's last `tail_blocks` layers where those trained)."""
        import torch

        from training.checkpoints import load_model
        from training.data import PostDataset, make_loader
        from training.runner import load_tokenizer
        from training.trainer import batch_logits

        model = load_model(checkpoint).eval()
        tok = load_tokenizer(model.config, checkpoint)
        ds: Any = PostDataset(records, tok, None, model.config.task_names, with_pixels=False)
        if getattr(model, "uses_images", True):
            from sdk.preprocess import PreprocessConfig
            from training.feature_cache import CachedFeatureDataset, FeatureCache, global_view_only

            cache = FeatureCache(self._cache_dir(), model, dtype=torch.float16, tail_blocks=tail_blocks)
            cache.fill(records, PreprocessConfig.from_dict(model.config.preprocess), batch_size=16,
                       progress=self.opts.progress)
            ds = CachedFeatureDataset(ds, cache, records, global_view_only if ablation == "global-only" else None)
        out: dict[str, list[np.ndarray]] = {t: [] for t in model.config.task_names}
        with torch.no_grad():
            for batch in make_loader(ds, batch_size=64, trim=True):
                for t, v in batch_logits(model, batch).items():
                    out[t].append(torch.softmax(v.float(), dim=-1).numpy())
        return {t: np.concatenate(v) for t, v in out.items()}

    # ---- decoding, best, int8 -------------------------------------------------------------------
    def _decoding(self, names: list[str]) -> dict[str, Any]:
        from training.recipe_report import decoding_table, margins

        _, select, dev = self._records()
        probs = {n: dict(np.load(self.out / n / "probs.npz")) for n in names}
        models = {n: decoding_table(self._structure(), self._tasks(), probs[n], select, dev) for n in names}
        chosen = {n: d["chosen"] for n, d in models.items()}
        margin = (margins(self._structure(), self._tasks(), probs, chosen, dev)
                  if "baseline" in names and len(names) > 1 else {})  # reported, never used to choose
        # each variant / ablation against the preset trained in the same run: what the change itself did on dev
        others = {n: p for n, p in probs.items() if n != "baseline"}
        vs_model = (margins(self._structure(), self._tasks(), others, chosen, dev, reference="model")
                    if "model" in others and len(others) > 1 else {})
        return {"models": models, "margins": margin, "margins_vs_model": vs_model}

    def _best(self, decoding: dict[str, Any], trained: dict[str, Any]) -> dict[str, Any]:
        from training.checkpoints import set_label_structure
        from training.recipe_report import write_model_card

        name = self._best_candidate(decoding)
        src = Path(trained[name]["checkpoint"])
        choice = decoding["models"][name]["chosen"]
        dst = self.out / "best"
        tmp = self.out / ".best.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        set_label_structure(tmp, self._structure(), choice)
        cfg = json.loads((tmp / "config.json").read_text())
        write_model_card(tmp, cfg, decoding["models"][name], self._done("data"), self.data)
        shutil.rmtree(dst, ignore_errors=True)
        tmp.rename(dst)
        return {"checkpoint": str(dst), "from": str(src), "candidate": name, "decoding": choice}

    def _best_candidate(self, decoding: dict[str, Any]) -> str:
        """The model or variant whose chosen decoding scores best on the selection slice (never dev)."""
        if self.opts.preset == BASELINE:
            return "baseline"
        models = decoding["models"]
        names = ["model", *(v for v in self.opts.variants if v in models)]
        return max(names, key=lambda n: models[n]["select"][models[n]["chosen"]]["mean_macro_f1"])

    def _int8(self, checkpoint: str = "best", bundle_name: str = "int8.sydes", decoding: str | None = None) -> dict:
        # -> the bundle's dev score; `decoding` (the one chosen on the slice) is recorded in the checkpoint first
        from export.pipeline import ExportOptions, export_checkpoints
        from training.checkpoints import set_label_structure
        from training.recipe_report import score_bundle
        if decoding is not None:
            set_label_structure(self.out / checkpoint, self._structure(), decoding)
        bundle = self.out / bundle_name
        t0 = time.perf_counter()
        export_checkpoints([self.out / checkpoint], bundle, ExportOptions(
            precision="int8", calib=self.data, calib_samples=self.opts.int8_calib_samples, overwrite=True))
        export_s = time.perf_counter() - t0
        _, _, dev = self._records()
        return {"bundle": str(bundle), "export_seconds": round(export_s, 1), **score_bundle(bundle, dev)}

    # ---- the run --------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from training.recipe_report import write_report

        o = self.opts
        self._stage("data", self._data)
        image_preset = o.preset != BASELINE
        trained: dict[str, Any] = {}
        if o.baseline or not image_preset:  # first: it needs no image, and it is the bar to clear
            trained["baseline"] = self._stage("baseline", lambda: self._train("baseline", BASELINE))
        if image_preset:
            self._stage("features", self._features)
            trained["model"] = self._stage("model", lambda: self._train("model", o.preset))
        for v in o.variants:
            trained[v] = self._stage(v, lambda v=v: self._train(v, o.preset, variant=v))
        for a in o.ablations:
            trained[a] = self._stage(a, lambda a=a: self._train(a, o.preset, ablation=a))
        # cheap and over every model trained so far (ablations may be added by a later run): always recomputed,
        # and so are best and int8 when the candidate they came from is no longer the best one
        (self.stages / "decoding.json").unlink(missing_ok=True)
        decoding = self._stage("decoding", lambda: self._decoding(list(trained)))
        done_best = self._done("best")
        if done_best is not None and done_best.get("candidate", "model") != self._best_candidate(decoding):
            for stale in ("best", "int8"):
                (self.stages / f"{stale}.json").unlink(missing_ok=True)
        best = self._stage("best", lambda: self._best(decoding, trained))
        int8 = base8 = None
        if o.int8:
            int8 = self._stage("int8", self._int8)
            if image_preset and "baseline" in trained:  # the baseline as users would deploy it too: ms/post, drop
                base8 = self._stage("baseline-int8", lambda: self._int8("baseline/best", "baseline-int8.sydes",
                                                                        decoding["models"]["baseline"]["chosen"]))
        stages = {p.stem: json.loads(p.read_text()).get("seconds") for p in sorted(self.stages.glob("*.json"), key=lambda p: p.stat().st_mtime)}
        return write_report(self.out, self.opts, self._done("data"), trained, decoding["models"], best, int8, stages,
                            decoding.get("margins"), base8, decoding.get("margins_vs_model"))

