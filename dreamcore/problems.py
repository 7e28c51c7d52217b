"""One way to say what pydantic refused, for every model a person's input reaches: the settings (named by
their environment variable), a job read from Redis (by its field path) and a limit an admin typed (by its
key). Each problem reads `<name>: <what is wrong> (<what is allowed>), got <the value>`, a secret never shown."""

from __future__ import annotations

import typing
from collections.abc import Callable

from pydantic import BaseModel, ValidationError

from .i18n import _, ngettext


def allowed(model: type[BaseModel], name: str) -> str | None:
    """What `model.name` takes, from its Field bounds: "allowed 1 to 100", "allowed 0 to 1500 characters"."""
    info = model.model_fields.get(name) or _by_alias(model, name)
    if info is None:
        return None
    lo = hi = minlen = maxlen = None
    for m in info.metadata:
        lo = m.ge if getattr(m, "ge", None) is not None else lo
        hi = m.le if getattr(m, "le", None) is not None else hi
        minlen = m.min_length if getattr(m, "min_length", None) is not None else minlen
        maxlen = m.max_length if getattr(m, "max_length", None) is not None else maxlen
    if lo is not None and hi is not None:
        return _("allowed {lo} to {hi}").format(lo=lo, hi=hi)
    if maxlen is not None:
        return ngettext("allowed {lo} to {hi} characters", "allowed {lo} to {hi} characters", maxlen).format(
            lo=minlen or 0, hi=maxlen)
    return None


def _by_alias(model: type[BaseModel], alias: str):
    """The field pydantic reports by its alias (the settings' environment variables: DREAMBOT_BATCH_IMAGES)."""
    for info in model.model_fields.values():
        va = info.validation_alias
        names = [c for c in getattr(va, "choices", []) if isinstance(c, str)] if not isinstance(va, str) else [va]
        if alias == info.alias or alias in names:
            return info
    return None


def _model_at(model: type[BaseModel], path: list[str]) -> type[BaseModel] | None:
    """The model that holds the last field of `path` (following nested and optional models)."""
    sub: type[BaseModel] | None = model
    for name in path:
        ann = sub.model_fields.get(name) if sub is not None else None
        found = [a for a in (ann.annotation, *typing.get_args(ann.annotation))
                 if isinstance(a, type) and issubclass(a, BaseModel)] if ann is not None else []
        sub = found[0] if found else sub
    return sub


def problems(err: ValidationError, model: type[BaseModel] | None = None, *,
             name: Callable[[list[str]], str] = lambda loc: ".".join(loc),
             hidden: Callable[[list[str]], bool] = lambda loc: False) -> list[tuple[str, str]]:
    """(field path, sentence) for each of pydantic's errors. `name` turns a location into what the reader
    knows it by; `hidden` says which values must not be echoed (tokens, passwords). An error of the whole
    model (a check across fields, at no location) is its message alone. Our words are in the language of the
    moment (dreamcore.i18n); pydantic's own messages stay as pydantic writes them."""
    out = []
    for e in err.errors():
        loc = [str(x) for x in e["loc"]]
        msg = e["msg"].removeprefix("Value error, ")
        if not loc:
            out.append(("", _("{name}: {problem}").format(name=name(loc), problem=msg)))
            continue
        holder = _model_at(model, loc[:-1]) if model is not None else None
        note = allowed(holder, loc[-1]) if holder is not None else None
        got = e.get("input")
        shown = _("a value that is not shown") if hidden(loc) else "{...}" if isinstance(got, dict) else repr(got)[:60]
        text = (_("{name}: {problem} ({allowed}), got {value}") if note else _("{name}: {problem}, got {value}"))
        out.append((".".join(loc), text.format(name=name(loc), problem=msg, allowed=note, value=shown)))
    return out
