"""A generated data set in MSED's layout, for tests and the demo (no real data, no licence strings).

Each image is `size` x `size` (default 448) with a smooth random background and a few coloured blocks.
The sentiment label is written as a FINE TEXTURE in a small patch somewhere in one quadrant: 1-pixel
checkerboard (negative), 1-pixel horizontal stripes (neutral) or 1-pixel vertical stripes (positive), all
black/white, so every patch has the same mean colour. The 224 global view (a 2x bicubic, antialiased
downscale) averages any of them to the same flat grey; only the 448 canvas tiles keep them apart.
So an image-only model needs the mixed-scale path to see sentiment.

The caption carries desire (a keyword per class) and, for negative posts, which negative emotion
(sad / anger / fear / disgust); a sentiment word appears only in `text_sentiment_rate` of captions.
Emotion follows sentiment as in MSED (happiness = positive, neutral = neutral, the other four negative).
Everything is deterministic given the seed.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from sdk.atomic import atomic_write_bytes, atomic_write_text
from training.data import MSED_TASKS

_DESIRE_WORDS = {
    "vengeance": "revenge", "curiosity": "wondering", "social-contact": "friends", "family": "family",
    "tranquility": "calm", "romance": "love", "none": "things",
}
_NEG_EMOTION_WORDS = {"sad": "tears", "anger": "shouting", "fear": "scared", "disgust": "gross"}
_SENTIMENT_WORDS = {"negative": "awful", "neutral": "ordinary", "positive": "wonderful"}
_SUBJECTS = ["a woman", "a man", "two kids", "an old couple", "a student", "a dog owner", "a chef", "a runner"]
_PLACES = ["at home", "in a park", "by the sea", "in the office", "on a street", "in a kitchen"]


def _texture(kind: int, h: int, w: int) -> np.ndarray:
    """0 checkerboard, 1 horizontal stripes, 2 vertical stripes; 1-pixel period-2, values 0 / 255."""
    yy, xx = np.mgrid[0:h, 0:w]
    bits = [(yy + xx) % 2, yy % 2, xx % 2][kind]
    return (bits * 255).astype(np.uint8)[..., None].repeat(3, axis=2)


def make_image(rng: np.random.Generator, sentiment: int, size: int = 448, patch: int = 56) -> np.ndarray:
    """uint8 [size, size, 3] with the sentiment texture in a random spot of a random quadrant."""
    # smooth background: bilinear blend of four random corner colours
    corners = rng.uniform(40, 215, size=(2, 2, 3))
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    s = np.linspace(0.0, 1.0, size)[None, :, None]
    img = ((1 - t) * ((1 - s) * corners[0, 0] + s * corners[0, 1])
           + t * ((1 - s) * corners[1, 0] + s * corners[1, 1]))
    for _ in range(int(rng.integers(2, 5))):  # low-frequency distractor blocks
        h, w = rng.integers(size // 10, size // 3, size=2)
        y, x = rng.integers(0, size - h), rng.integers(0, size - w)
        img[y:y + h, x:x + w] = rng.uniform(0, 255, size=3)
    img = img.astype(np.uint8)
    q = int(rng.integers(0, 4))
    half = size // 2
    oy, ox = (q // 2) * half, (q % 2) * half
    margin = 4
    y = oy + int(rng.integers(margin, half - patch - margin))
    x = ox + int(rng.integers(margin, half - patch - margin))
    # even offsets keep the texture phase identical across samples
    y -= y % 2
    x -= x % 2
    img[y:y + patch, x:x + patch] = _texture(sentiment, patch, patch)
    return img


def _labels(rng: np.random.Generator) -> tuple[str, str, str]:
    sentiment = str(rng.choice(MSED_TASKS["sentiment"]))
    if sentiment == "positive":
        emotion = "happiness"
    elif sentiment == "neutral":
        emotion = "neutral"
    else:
        emotion = str(rng.choice(["sad", "anger", "fear", "disgust"]))
    desire = str(rng.choice(MSED_TASKS["desire"]))
    return sentiment, emotion, desire


def make_caption(rng: np.random.Generator, sentiment: str, emotion: str, desire: str,
                 text_sentiment_rate: float) -> str:
    words = [str(rng.choice(_SUBJECTS)), str(rng.choice(_PLACES)), "thinking about", _DESIRE_WORDS[desire]]
    if emotion in _NEG_EMOTION_WORDS:
        words.append("with " + _NEG_EMOTION_WORDS[emotion])
    if rng.random() < text_sentiment_rate:
        words.append("feeling " + _SENTIMENT_WORDS[sentiment])
    return " ".join(words)


def generate(root: str | os.PathLike[str], *, splits: dict[str, int] | None = None, seed: int = 0,
             size: int = 448, text_sentiment_rate: float = 0.3) -> Path:
    """Write `{root}/{split}/{split}.csv` + `images/K.jpg` for each split; returns `root`.

    JPEGs are saved at quality 100 without chroma subsampling so the 1-pixel textures survive.
    """
    from PIL import Image

    splits = {"train": 64, "dev": 32} if splits is None else splits
    root = Path(root)
    for i, (split, n) in enumerate(splits.items()):
        rng = np.random.default_rng([seed, i])
        folder = root / split
        (folder / "images").mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["Title", "Caption", "Sentiment", "Emotion", "Desire", "Inference Sequence"])
        for k in range(1, n + 1):
            sentiment, emotion, desire = _labels(rng)
            img = make_image(rng, MSED_TASKS["sentiment"].index(sentiment), size=size)
            caption = make_caption(rng, sentiment, emotion, desire, text_sentiment_rate)
            jpg = io.BytesIO()
            Image.fromarray(img).save(jpg, format="JPEG", quality=100, subsampling=0)
            atomic_write_bytes(folder / "images" / f"{k}.jpg", jpg.getvalue())
            w.writerow([f"synthetic post {k}", caption, sentiment, emotion, desire, "S-E-D"])
        atomic_write_text(folder / f"{split}.csv", buf.getvalue())
    atomic_write_text(root / "README.md", "Synthetic SyDES data set (training/synthetic.py, seed "
                      f"{seed}): sentiment is a 1-pixel texture only visible at high resolution.\n")
    return root
