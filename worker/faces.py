"""The face pass: the faces the models drew small, redrawn close up (the ADetailer recipe).

At one megapixel a face 80 pixels wide gets 80 pixels of the models' attention, and it collapses: smeared
eyes, a mouth that is not one. Redrawn alone at the models' native size, the same face gets a whole
canvas. In order, for every image of a call:

1. Find the faces: OpenCV's Haar cascade (below, for why this detector) on the image scaled to DETECT_SIDE.
2. Choose: "auto" takes the faces at most SMALL of the image's short side (the ones that collapse), "on"
   every face found; at most MAX_FACES an image, the largest first.
3. Crop a square CONTEXT times the face's side around it (so the model sees hair, neck and light), kept
   inside the image, and scale it to the models' native size.
4. Redraw: the refiner (the base where no refiner is loaded) in img2img at the pass's strength, with the
   job's own prompt and style, one generator per face seeded from its image's seed and its place: a seed
   still gives the same picture. Every crop that shares a step count, a guidance and a prompt length goes
   through one call, as many as one call fits (the memory plan's images per call).
5. Blend back: the redrawn crop scaled back down and laid over the image under a feathered ellipse around
   the face; every pixel outside it is the image's own.

The detector: `haarcascade_frontalface_alt2.xml`, which ships inside OpenCV's wheel (OpenCV is Apache-2.0,
the cascade under the Intel License Agreement, BSD-style: commercial use and redistribution allowed), so
there is nothing to fetch. Chosen on recall on small faces, measured on scikit-image's `astronaut` set into
1024x1024 frames (bench/faces.py, RESULTS.md): found with its box at IoU >= 0.5 down to 30 px, no false
face on the faceless samples at these settings. The others looked at: facenet-pytorch's MTCNN (pins
torch < 2.3, numpy < 2, Pillow < 10.3: it can't install beside this stack), MediaPipe's face detector (its
wheel ships no model file), OpenCV's YuNet (its ONNX model is not in the wheel), OpenCV 5 (no Haar
cascades left), ultralytics' YOLO face models (AGPL-3.0).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline
from PIL import Image, ImageDraw, ImageFilter

from dreamcore.cost import FACE_SIDE, img2img_steps
from dreamcore.job import DreamRequest, FacePass
from dreamcore.styles import load_styles

from .errors import free_gpu_memory, is_oom
from .pipeline import DECODED, DreamPipeline, StepEvent, checked_images
from .prompts import StageEmbeds, batch_kwargs, encode_prompts

log = logging.getLogger("dreambot.worker")

CASCADE = "haarcascade_frontalface_alt2.xml"
# The detector looks at the image scaled to this long side: 1.5x fewer pixels a side than 1024 costs a
# third of the time, and the cascade's 20-pixel window there is a 30-pixel face at 1024.
DETECT_SIDE = 683
SCALE_STEP = 1.05  # the cascade's pyramid step: 1.1 loses faces under 40 px (bench/faces.py)
NEIGHBOURS = 5  # overlapping hits a face needs: 4 let the odd false face through on the samples
SMALL = 0.25  # auto: a face at most this share of the short side collapses at one megapixel
MAX_FACES = 6  # per image: a crowd costs at most this many redraws
CONTEXT = 2.5  # a crop's side, in face sides
ELLIPSE = 1.3  # the mask's ellipse around the face box, in face sides (chin, hairline, ears)
FEATHER = 0.12  # the mask's blur radius, in face sides


class NoFaces(ValueError):
    """A Fix faces job over an image with no face in it; `str()` is fit to show the member."""


@dataclass(frozen=True)
class Box:
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def side(self) -> int:
        return max(self.x1 - self.x0, self.y1 - self.y0)


# One classifier per thread: a CascadeClassifier keeps its working buffers in the object, and two threads
# detecting with one object at once get each other's faces (tests/e2e/test_faces.py caught it).
_local = threading.local()


def _detector() -> cv2.CascadeClassifier:
    cascade = getattr(_local, "cascade", None)
    if cascade is None:
        path = cv2.data.haarcascades + CASCADE
        cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            raise RuntimeError(f"OpenCV's face cascade could not be loaded from {path}")
        _local.cascade = cascade
    return cascade


def find_faces(image: Image.Image) -> list[Box]:
    """Every face the detector finds in `image`, as boxes in its pixels, the largest first."""
    gray = np.asarray(image.convert("L"))
    h, w = gray.shape
    scale = min(1.0, DETECT_SIDE / max(w, h))
    if scale < 1.0:
        gray = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    found = _detector().detectMultiScale(gray, scaleFactor=SCALE_STEP, minNeighbors=NEIGHBOURS, minSize=(20, 20))
    boxes = [Box(round(x / scale), round(y / scale), round((x + bw) / scale), round((y + bh) / scale))
             for x, y, bw, bh in (found if len(found) else [])]
    return sorted(boxes, key=lambda b: -b.side)


def chosen(faces: list[Box], size: tuple[int, int], mode: str) -> list[Box]:
    """The faces the pass redraws: the small ones for "auto", every one for "on"; at most MAX_FACES."""
    limit = SMALL * min(size)
    return [b for b in faces if mode == "on" or b.side <= limit][:MAX_FACES]


def crop_box(face: Box, size: tuple[int, int]) -> Box:
    """A square CONTEXT face sides wide around `face`, moved (and if need be shrunk) to lie inside the image."""
    w, h = size
    side = min(round(face.side * CONTEXT), w, h)
    cx, cy = (face.x0 + face.x1) / 2, (face.y0 + face.y1) / 2
    x0 = min(max(0, round(cx - side / 2)), w - side)
    y0 = min(max(0, round(cy - side / 2)), h - side)
    return Box(x0, y0, x0 + side, y0 + side)


def face_mask(face: Box, crop: Box, side: int) -> Image.Image:
    """The blend mask over a crop scaled to `side`: a feathered ellipse around the face (white is redrawn)."""
    k = side / crop.side
    cx, cy = ((face.x0 + face.x1) / 2 - crop.x0) * k, ((face.y0 + face.y1) / 2 - crop.y0) * k
    r = face.side * k * ELLIPSE / 2
    blur = face.side * k * FEATHER
    mask = Image.new("L", (side, side), 0)
    # The ellipse is drawn smaller by the blur, so the feather stays inside the drawn area's reach.
    ImageDraw.Draw(mask).ellipse((cx - r + blur, cy - r * 1.15 + blur, cx + r - blur, cy + r * 1.15 - blur), fill=255)
    return mask.filter(ImageFilter.GaussianBlur(blur / 2))


def face_seed(image_seed: int, k: int) -> int:
    """Face k of an image's generator seed: its image's seed and its place, so it is the same every run."""
    return (image_seed * 1_000_003 + k + 1) % 2**63


@dataclass
class Target:
    """One image to go over: whose it is (`owner`, the index of its job in the step hook's list), the request
    whose prompt redraws it, its seed and the pass's mode and strength."""

    owner: int
    request: DreamRequest
    image: Image.Image
    seed: int
    face_pass: FacePass


@dataclass
class Redrawn:
    """What the pass made of one Target."""

    image: Image.Image
    found: int
    redrawn: int  # a face that came out broken (NaN) is left as it was, and not counted


@dataclass
class _Crop:
    target: int  # its Target's index
    face: Box
    box: Box
    picture: Image.Image  # the crop at the native size
    seed: int
    embeds: StageEmbeds = field(repr=False)
    steps: int  # num_inference_steps to ask for
    run: int  # steps that run
    guidance: float
    strength: float
    out: Image.Image | None = None
    bad: bool = False


def detect_all(images: Sequence[Image.Image]) -> list[list[Box]]:
    """find_faces over several images side by side (OpenCV releases the GIL while it looks)."""
    if len(images) <= 1:
        return [find_faces(im) for im in images]
    with ThreadPoolExecutor(max_workers=min(len(images), 8), thread_name_prefix="faces") as ex:
        return list(ex.map(find_faces, images))


@torch.inference_mode()
def redraw(pipe: DreamPipeline, targets: list[Target], on_step: Callable[[StepEvent], None] | None = None,
           call_images: int | None = None) -> tuple[list[Redrawn], float]:
    """The face pass over every target: what became of each, and the seconds the pass took. Raises what the
    pipeline raises (a cancel from `on_step`, a timeout); a call that runs out of GPU memory is run again a
    crop at a time."""
    t0 = time.perf_counter()
    # 1-2. Find and choose.
    found = detect_all([t.image for t in targets])
    drawer = pipe.refiner if pipe.refiner is not None else pipe.reused(StableDiffusionXLImg2ImgPipeline)
    # 3. Crop, with each request's prompt encoded once for the drawer.
    crops: list[_Crop] = []
    encoded: dict[tuple, StageEmbeds] = {}
    rgbs = [t.image.convert("RGB") for t in targets]
    for ti, (t, faces) in enumerate(zip(targets, found, strict=True)):
        req = t.request
        for k, face in enumerate(chosen(faces, t.image.size, t.face_pass.mode)):
            key = (req.prompt, req.negative_prompt, req.style)
            if key not in encoded:
                prompt, negative = load_styles()[req.style].apply(req.prompt, req.negative_prompt)
                encoded[key] = encode_prompts(drawer, None, prompt, negative).base
            box = crop_box(face, t.image.size)
            picture = rgbs[ti].crop((box.x0, box.y0, box.x1, box.y1)).resize(
                (FACE_SIDE, FACE_SIDE), Image.Resampling.LANCZOS)
            steps, run = img2img_steps(req.steps, t.face_pass.strength)
            crops.append(_Crop(ti, face, box, picture, face_seed(t.seed, k), encoded[key], steps, run,
                               float(req.guidance), t.face_pass.strength))
    # 4. Redraw, in as few calls as fit.
    groups: dict[tuple, list[_Crop]] = {}
    for c in crops:
        groups.setdefault((c.steps, c.strength, c.guidance, tuple(c.embeds.prompt_embeds.shape)), []).append(c)
    most = max(1, call_images or 16)
    calls = [g[i:i + most] for g in groups.values() for i in range(0, len(g), most)]
    total = sum(call[0].run for call in calls)
    done = [0]
    for call in calls:
        _draw(pipe, drawer, call, on_step, done, total)
    # 5. Blend back.
    out = []
    for ti, image in enumerate(rgbs):
        mine = [c for c in crops if c.target == ti]
        if mine:
            canvas = np.asarray(image, dtype=np.float32).copy()
            for c in mine:
                if c.bad:
                    continue
                side = c.box.side
                drawn = np.asarray(c.out.resize((side, side), Image.Resampling.LANCZOS), dtype=np.float32)
                m = np.asarray(face_mask(c.face, c.box, side), dtype=np.float32)[..., None] / 255.0
                region = canvas[c.box.y0:c.box.y1, c.box.x0:c.box.x1]
                canvas[c.box.y0:c.box.y1, c.box.x0:c.box.x1] = region * (1 - m) + drawn * m
            image = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8))
        if any(c.bad for c in mine):
            log.warning("a redrawn face came out broken and was left as it was", extra={"faces": len(mine)})
        out.append(Redrawn(image, len(found[ti]), sum(not c.bad for c in mine)))
    return out, time.perf_counter() - t0


def _draw(pipe: DreamPipeline, drawer, call: list[_Crop], on_step, done: list[int], total: int) -> None:
    """One img2img call over `call`'s crops (again one crop at a time if it runs out of GPU memory)."""
    first = call[0]
    rows: dict[int, slice] = {}
    for i, c in enumerate(call):  # a target's crops are next to one another in a call
        start = rows[c.target].start if c.target in rows else i
        rows[c.target] = slice(start, i + 1)
    counted = [0]

    def on_step_end(_pipe, i: int, t, tensors: dict) -> dict:
        counted[0] += 1
        done[0] += 1
        if on_step is not None:
            on_step(StepEvent("faces", counted[0], first.run, done[0], total, tensors["latents"], rows=dict(rows)))
        return {}

    try:
        images = drawer(
            **batch_kwargs([(c.embeds, 1) for c in call]),
            image=[c.picture for c in call],
            strength=first.strength,
            num_inference_steps=first.steps,
            guidance_scale=first.guidance,
            generator=[torch.Generator("cpu").manual_seed(c.seed) for c in call],
            output_type=DECODED,
            callback_on_step_end=on_step_end,
            callback_on_step_end_tensor_inputs=["latents"],
        ).images
    except Exception as err:
        if not is_oom(err) or len(call) == 1:
            raise
        free_gpu_memory()
        log.warning("face pass ran out of GPU memory; redrawing its faces one at a time", extra={"faces": len(call)})
        done[0] -= counted[0]
        for c in call:
            _draw(pipe, drawer, [c], on_step, done, total)
        return
    pipe.sync()
    for c, (image, bad) in zip(call, checked_images(images), strict=True):
        c.out, c.bad = image, bad


def redrawn_timings(timings: dict[str, float], seconds: float, found: int, redrawn: int) -> dict[str, float]:
    """A Generation's timings with the face pass's: its seconds (faces_s, in total_s too) and its counts."""
    out = dict(timings)
    out["faces_s"] = seconds
    out["faces_found"] = found
    out["faces_redrawn"] = redrawn
    if "total_s" in out:
        out["total_s"] += seconds
    return out

