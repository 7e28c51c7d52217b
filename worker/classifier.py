"""The output classifier: one transformers image classifier scores every finished image (and each live
preview) before anything is published.

It is an ordinary `AutoModelForImageClassification` with its `AutoImageProcessor`, named by
DREAMBOT_SAFETY_MODEL and loaded like the SDXL models (a local folder, or a hub id through the HF cache).
The score of an image is the probability the model gives to the labels named in DREAMBOT_SAFETY_LABELS
(summed, for models that split "porn", "hentai", "sexy"); what a guild does with a score is its policy
(dreamcore.moderation), applied by the bot when it posts, so an admin's change takes effect at once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from rq.timeouts import JobTimeoutException

from dreamcore.settings import Settings

from .errors import SafetyCheckFailed, is_oom
from .weights import ModelLoadError, resolve_device

log = logging.getLogger("dreambot.moderated")

SETTING = "DREAMBOT_SAFETY_MODEL"


class SafetyChecker:
    def __init__(self, model, processor, device: torch.device, flagged: list[int], name: str):
        self.model = model
        self.processor = processor
        self.device = device
        self.flagged = flagged  # the label ids whose probabilities make the score
        self.name = name

    @classmethod
    def load(cls, model: str, labels: list[str], device: torch.device | str = "cpu") -> SafetyChecker:
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        dev = resolve_device(device) if isinstance(device, str) else device
        path = Path(model).expanduser()
        source, local = (str(path), True) if path.is_dir() else (model, False)
        # fp16 on a GPU: a ViT classifier's verdict does not move at that precision, and it halves its memory.
        dtype = torch.float16 if dev.type == "cuda" else torch.float32
        try:
            processor = AutoImageProcessor.from_pretrained(source, local_files_only=local)
            net = AutoModelForImageClassification.from_pretrained(source, local_files_only=local, dtype=dtype)
        except Exception as err:  # transformers raises OSError, ValueError, ... depending on what is off
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            where = "no classifier found there" if local else "could not load it from the hub or its cache"
            raise ModelLoadError(SETTING, model, f"{where} ({type(err).__name__}: {first}); "
                                 "DREAMBOT_SAFETY_CHECK=false turns the output classifier off") from err
        id2label = {int(i): str(name) for i, name in net.config.id2label.items()}
        wanted = {x.strip().casefold() for x in labels if x.strip()}
        flagged = sorted(i for i, name in id2label.items() if name.casefold() in wanted)
        if not flagged:
            raise ModelLoadError("DREAMBOT_SAFETY_LABELS", ",".join(labels),
                                 f"none of these is a label of {model} (its labels: "
                                 f"{', '.join(id2label[i] for i in sorted(id2label))})")
        return cls(net.to(dev).eval(), processor, dev, flagged, model)

    @torch.inference_mode()
    def scores(self, images: list[Image.Image]) -> list[float]:
        """The flagged labels' probability for each image, in one batched call."""
        if not images:
            return []
        batch = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        pixels = batch["pixel_values"].to(self.device, self.model.dtype)
        probs = self.model(pixel_values=pixels).logits.float().softmax(dim=-1)
        return [round(float(p), 4) for p in probs[:, self.flagged].sum(dim=-1).clamp(0.0, 1.0).cpu()]

    def timed_scores(self, images: list[Image.Image]) -> tuple[list[float], float]:
        t0 = time.perf_counter()
        out = self.scores(images)
        return out, time.perf_counter() - t0


def load_checker(settings: Settings, device: torch.device | str | None = None) -> SafetyChecker | None:
    """The worker's classifier, or None when the operator turned it off (DREAMBOT_SAFETY_CHECK=false)."""
    if not settings.safety_check:
        log.warning("output classifier is off (DREAMBOT_SAFETY_CHECK=false): images are posted unscored")
        return None
    t0 = time.perf_counter()
    checker = SafetyChecker.load(settings.safety_model, settings.safety_label_list, device or settings.device)
    log.info("output classifier loaded", extra={"model": settings.safety_model, "device": str(checker.device),
                                                "labels": settings.safety_label_list,
                                                "seconds": round(time.perf_counter() - t0, 2)})
    return checker


@dataclass
class Scored:
    scores: list[float | None]
    seconds: float  # the classifier's time for the call these images were in (a batch's, like its stages)


def score_images(checker: SafetyChecker | None, gens: list) -> list[Scored]:
    """Every image of `gens` (Generations) through `checker` in one batched call, before anything is
    published; no checker (DREAMBOT_SAFETY_CHECK=false): no scores."""
    if checker is None:
        return [Scored([None] * len(g.images), 0.0) for g in gens]
    scores, seconds = checked_scores(checker, [im for g in gens for im in g.images])
    out, k = [], 0
    for g in gens:
        out.append(Scored(scores[k:k + len(g.images)], seconds))
        k += len(g.images)
    return out


def checked_scores(checker: SafetyChecker, images: list[Image.Image]) -> tuple[list[float], float]:
    """Scores and seconds; a classifier that fails (out of memory aside) is SafetyCheckFailed: nothing made
    from an image it could not judge is published."""
    try:
        return checker.timed_scores(images)
    except JobTimeoutException:
        raise
    except Exception as err:
        if is_oom(err):
            raise
        raise SafetyCheckFailed(f"{type(err).__name__}: {err}") from err
