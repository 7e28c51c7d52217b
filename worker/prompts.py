"""Prompt encoding for SDXL that handles long prompts on purpose instead of silently cutting them.

CLIP sees 77 positions: a start token, up to 75 prompt tokens, an end token (then padding). diffusers'
`encode_prompt` truncates anything longer and only logs a warning, so a member's detailed prompt would lose
its tail without anyone noticing. Here a longer prompt is split into chunks of 75 tokens, each chunk is
wrapped in start/end tokens and padded to 77 exactly as the tokenizer would do it, every chunk goes through
the encoder on its own, and the per-chunk hidden states are concatenated along the sequence axis (the
approach of A1111's webui and compel). The UNet's cross-attention takes any sequence length, so it simply
attends to all of them. The pooled embedding, which has no sequence axis, comes from the first chunk.

The positive and negative prompts must have the same sequence length for classifier-free guidance (they
run as one batch), so the shorter one is padded with empty chunks. Beyond MAX_CHUNKS the prompt is refused
with PromptTooLong rather than cut.

For a prompt of at most 75 tokens the result is exactly what diffusers' own `encode_prompt` gives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

CHUNK_TOKENS = 75  # 77 positions less the start and end tokens
MAX_CHUNKS = 4  # 300 tokens


class PromptTooLong(ValueError):
    """A prompt longer than the chunked encoder accepts; `str()` is fit to show the member."""

    def __init__(self, which: str, tokens: int, max_tokens: int):
        self.which = which
        self.tokens = tokens
        self.max_tokens = max_tokens
        super().__init__(
            f"{which} is {tokens} tokens; the most is {max_tokens}"
            f" ({max_tokens // CHUNK_TOKENS} chunks of {CHUNK_TOKENS}). Shorten it by {tokens - max_tokens} tokens."
        )


@dataclass
class StageEmbeds:
    """What one SDXL pipeline (base or refiner) takes instead of prompt strings; batch size 1."""

    prompt_embeds: torch.Tensor  # (1, 77 * chunks, sum of the encoders' hidden widths)
    negative_prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor  # (1, projection width of text_encoder_2)
    negative_pooled_prompt_embeds: torch.Tensor

    def pipeline_kwargs(self, batch: int) -> dict[str, torch.Tensor]:
        """Keyword arguments for the pipeline's __call__, repeated to `batch` images."""
        return {
            "prompt_embeds": self.prompt_embeds.repeat(batch, 1, 1),
            "negative_prompt_embeds": self.negative_prompt_embeds.repeat(batch, 1, 1),
            "pooled_prompt_embeds": self.pooled_prompt_embeds.repeat(batch, 1),
            "negative_pooled_prompt_embeds": self.negative_pooled_prompt_embeds.repeat(batch, 1),
        }


def batch_kwargs(parts: list[tuple[StageEmbeds, int]]) -> dict[str, torch.Tensor]:
    """Keyword arguments for one pipeline call that runs several prompts: each (embeds, count) repeated to
    `count` images, stacked in order along the batch axis.

    Every part must have the same sequence length (the same number of 75-token chunks): rows of one batch
    can't differ in length, and padding a prompt with empty chunks would change its image (the UNet would
    attend to them), so callers run prompts of different lengths as separate calls instead.
    """
    if not parts:
        raise ValueError("no prompts to batch")
    shapes = {tuple(e.prompt_embeds.shape[1:]) for e, _ in parts}
    if len(shapes) > 1:
        raise ValueError(f"prompt embeddings of different shapes can't share a batch: {sorted(shapes)}")
    each = [e.pipeline_kwargs(count) for e, count in parts]
    return {name: torch.cat([kw[name] for kw in each]) for name in each[0]}


@dataclass
class EncodedPrompts:
    base: StageEmbeds
    refiner: StageEmbeds | None
    tokens: int  # the prompt's token count (the largest any of the tokenizers gave)
    chunks: int
    note: str | None  # set when the prompt needed more than one chunk, to tell the member


def _encoders(pipe) -> list[tuple[object, torch.nn.Module]]:
    """The (tokenizer, text encoder) pairs a pipeline has: both for the SDXL base, only the second for the refiner."""
    pairs = []
    for tok_name, enc_name in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")):
        tokenizer = getattr(pipe, tok_name, None)
        encoder = getattr(pipe, enc_name, None)
        if tokenizer is not None and encoder is not None:
            pairs.append((tokenizer, encoder))
    if not pairs:
        raise ValueError(f"{type(pipe).__name__} has no text encoder")
    return pairs


def token_ids(tokenizer, text: str) -> list[int]:
    """The text's token ids without the start/end tokens, and without truncation."""
    # verbose=False: the tokenizer would otherwise warn that the ids are longer than 77, which is the point.
    return tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids


def count_tokens(pipes, text: str) -> int:
    """The text's length in tokens, the largest over every tokenizer the pipelines use."""
    return max(len(token_ids(tok, text)) for pipe in pipes if pipe is not None for tok, _ in _encoders(pipe))


def chunk_input_ids(tokenizer, ids: list[int], n_chunks: int) -> torch.Tensor:
    """(n_chunks, 77) ids: each chunk is start + up to 75 tokens + end + the tokenizer's own padding.

    That is exactly what `tokenizer(text, padding="max_length", max_length=77)` makes of a short prompt,
    including each tokenizer's own pad token (SDXL's second tokenizer pads with "!", not with the end token).
    Chunks past the text's end are empty (start, end, padding), like an encoded "".
    """
    rows = []
    for i in range(n_chunks):
        chunk = ids[i * CHUNK_TOKENS : (i + 1) * CHUNK_TOKENS]
        pad = [tokenizer.pad_token_id] * (CHUNK_TOKENS - len(chunk))
        rows.append([tokenizer.bos_token_id, *chunk, tokenizer.eos_token_id, *pad])
    return torch.tensor(rows, dtype=torch.long)


def encode_text(
    tokenizer, text_encoder, text: str, n_chunks: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Hidden states (1, 77 * n_chunks, width) and, for an encoder with a projection, the pooled embeds (1, proj).

    SDXL conditions on the penultimate layer's hidden states (hidden_states[-2]), not the last one.
    """
    input_ids = chunk_input_ids(tokenizer, token_ids(tokenizer, text), n_chunks).to(text_encoder.device)
    # Each chunk is a separate row of the batch, so each gets CLIP's full positional window of its own.
    out = text_encoder(input_ids, output_hidden_states=True)
    hidden = out.hidden_states[-2]  # (n_chunks, 77, width)
    hidden = hidden.reshape(1, n_chunks * hidden.shape[1], hidden.shape[2])
    pooled = getattr(out, "text_embeds", None)
    return hidden, (pooled[:1] if pooled is not None else None)


def encode_for(pipe, prompt: str, negative: str, n_chunks: int) -> StageEmbeds:
    """The prompt and negative embeds one SDXL pipeline expects, built from its own tokenizers and encoders."""
    hidden, neg_hidden = [], []
    pooled = neg_pooled = None
    for tokenizer, encoder in _encoders(pipe):
        h, p = encode_text(tokenizer, encoder, prompt, n_chunks)
        hidden.append(h)
        pooled = p if p is not None else pooled  # SDXL pools from the last (projected) encoder
        if negative:
            nh, np_ = encode_text(tokenizer, encoder, negative, n_chunks)
            neg_hidden.append(nh)
            neg_pooled = np_ if np_ is not None else neg_pooled
    if pooled is None:
        raise ValueError(
            f"{type(pipe).__name__}: no text encoder gives pooled embeds (text_encoder_2 is missing)"
        )
    prompt_embeds = torch.cat(hidden, dim=-1)  # the base: CLIP-L and OpenCLIP-bigG side by side
    if negative:
        negative_embeds = torch.cat(neg_hidden, dim=-1)
    elif pipe.config.force_zeros_for_empty_prompt:
        # What diffusers does for no negative prompt on the SDXL base: zeros rather than the encoding of "".
        negative_embeds = torch.zeros_like(prompt_embeds)
        neg_pooled = torch.zeros_like(pooled)
    else:
        # The SDXL refiner's config says encode "" instead.
        negative_embeds = torch.cat([encode_text(t, e, "", n_chunks)[0] for t, e in _encoders(pipe)], dim=-1)
        neg_pooled = encode_text(*_encoders(pipe)[-1], "", n_chunks)[1]
    return StageEmbeds(prompt_embeds, negative_embeds, pooled, neg_pooled)


def encode_prompts(
    base, refiner, prompt: str, negative: str = "", max_chunks: int = MAX_CHUNKS
) -> EncodedPrompts:
    """Encode for the base and (unless it is None) the refiner, in as many 75-token chunks as the longer text needs.

    Raises PromptTooLong when the prompt or the negative prompt needs more than `max_chunks` chunks.
    """
    pipes = [p for p in (base, refiner) if p is not None]
    max_tokens = max_chunks * CHUNK_TOKENS
    tokens = count_tokens(pipes, prompt)
    neg_tokens = count_tokens(pipes, negative) if negative else 0
    if tokens > max_tokens:
        raise PromptTooLong("the prompt (with its style)", tokens, max_tokens)
    if neg_tokens > max_tokens:
        raise PromptTooLong("the negative prompt (yours and the style's together)", neg_tokens, max_tokens)
    n_chunks = max(1, math.ceil(tokens / CHUNK_TOKENS), math.ceil(neg_tokens / CHUNK_TOKENS))
    note = None
    if n_chunks > 1:
        note = f"prompt is {tokens} tokens: encoded in {n_chunks} chunks of {CHUNK_TOKENS}"
        if neg_tokens > CHUNK_TOKENS:
            note += f" (negative prompt {neg_tokens} tokens)"
    return EncodedPrompts(
        base=encode_for(base, prompt, negative, n_chunks),
        refiner=encode_for(refiner, prompt, negative, n_chunks) if refiner is not None else None,
        tokens=tokens,
        chunks=n_chunks,
        note=note,
    )
