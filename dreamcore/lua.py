"""Lua scripts kept in `.lua` files beside the Python that calls them, called with named keys and arguments.

A script's keys, arguments and shared formats are declared once, in Python, where the caller builds them:

    CLAIM = LuaScript(Path(__file__).with_name("claim.lua"),
                      keys=("index", "*queues"),          # K.index, and K.queues: every key after it, a list
                      consts={"ENTRY": ENTRY_FORMAT})     # C.ENTRY, the same string the Python side uses
    CLAIM(conn, keys={"index": ..., "queues": [...]}, args={"now": now, "job_id": job_id})  # A.now, A.job_id

The loader puts a short prelude in front of the file's text that binds `K` (the keys by name, from KEYS in
the declared order), `C` (the constants, as Lua literals; a tuple becomes a Lua array) and `A` (the arguments:
one JSON object in ARGV[1], decoded with Redis' own cjson). So a script never counts positions, and a format
both languages use is written in Python only. cjson reads numbers as doubles: pass an integer past 2**53 (a
Discord id) as a string.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import redis


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if abs(value) > 2**53:
            raise ValueError(f"{value} is past a Lua number's exact range: declare it as a string")
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} has no Lua literal")
        return repr(value)
    if isinstance(value, str):
        if not value.isascii():
            raise ValueError(f"{value!r}: declare ASCII text (a JSON escape is no Lua escape)")
        return json.dumps(value)  # an ASCII JSON string is a valid Lua string literal
    if isinstance(value, tuple):
        return "{" + ", ".join(_literal(v) for v in value) + "}"
    raise TypeError(f"a Lua constant must be a bool, a number, a string or a tuple of them, "
                    f"not {type(value).__name__}")


def _code(path: Path) -> str:
    """A file's text less its whole-line comments: EVAL (a script run inside a MULTI) sends and hashes the
    whole text on every call, and the comments are for whoever reads the file. Lua's long brackets (`[[`, a
    block comment `--[[`) are refused: a line inside one that starts with `--` is no comment to drop."""
    text = Path(path).read_text()
    if re.search(r"\[=*\[", text):
        raise ValueError(f"{Path(path).name}: long brackets ([[ or [=[) are not supported here; use '--' comments "
                         "and quoted strings")
    return "".join(line for line in text.splitlines(keepends=True) if not line.lstrip().startswith("--"))


class LuaScript:
    """One script file with its declared keys (a trailing "*name" takes every key after it, as a list)
    and constants. Registered per connection on first use (redis-py's EVALSHA, EVAL on a cache miss)."""

    def __init__(self, path: Path, keys: Sequence[str] = (), consts: Mapping[str, Any] | None = None,
                 include: Sequence[Path] = ()):
        """`include`: files whose text goes between the bindings and the script's own (Lua shared by several
        scripts: Redis runs one text, it has no `require`)."""
        self.path = Path(path)
        self.keys = tuple(keys)
        if any(k.startswith("*") for k in self.keys[:-1]):
            raise ValueError(f"{self.path.name}: only the last key may take the rest ('*name')")
        self.rest = self.keys[-1][1:] if self.keys and self.keys[-1].startswith("*") else None
        self.named = self.keys[:-1] if self.rest else self.keys
        consts = dict(consts or {})
        lines = ["local K = {" + ", ".join(f"{n} = KEYS[{i}]" for i, n in enumerate(self.named, 1)) + "}"]
        if self.rest:
            lines.append(f"K.{self.rest} = {{}}")
            lines.append(f"for i = {len(self.named) + 1}, #KEYS do K.{self.rest}[#K.{self.rest} + 1] = KEYS[i] end")
        lines.append("local C = {" + ", ".join(f"{n} = {_literal(v)}" for n, v in consts.items()) + "}")
        lines.append("local A = ARGV[1] and cjson.decode(ARGV[1]) or {}")
        shared = "".join(_code(p) + "\n" for p in include)
        self.source = "\n".join(lines) + "\n" + shared + _code(self.path)
        self._attr = f"_dream_lua_{self.path.stem}_{id(self)}"

    def _registered(self, conn: redis.Redis):
        script = getattr(conn, self._attr, None)
        if script is None:
            script = conn.register_script(self.source)
            setattr(conn, self._attr, script)
        return script

    def key_list(self, keys: Mapping[str, Any]) -> list:
        """KEYS in the declared order; a key missing or not declared is a caller's bug, said by name."""
        wanted = set(self.named) | ({self.rest} if self.rest else set())
        if unknown := set(keys) - wanted:
            raise ValueError(f"{self.path.name}: keys not declared: {sorted(unknown)}")
        if missing := [n for n in self.named if n not in keys]:
            raise ValueError(f"{self.path.name}: keys missing: {missing}")
        return [keys[n] for n in self.named] + list(keys.get(self.rest, ()) if self.rest else ())

    def __call__(self, conn: redis.Redis, keys: Mapping[str, Any] | None = None,
                 args: Mapping[str, Any] | None = None, client=None):
        """Run it on `conn` (or inside `client`, a pipeline of that connection)."""
        return self._registered(conn)(keys=self.key_list(keys or {}), args=self._argv(args), client=client)

    def eval_in(self, pipe, keys: Mapping[str, Any] | None = None, args: Mapping[str, Any] | None = None):
        """Queue it in `pipe` as EVAL with its whole text. A registered script in a redis-py pipeline makes
        every execute() send SCRIPT EXISTS first, a round trip and a command more: a transaction whose
        commands are counted (a /dream's enqueue) sends the text instead."""
        key_list = self.key_list(keys or {})
        return pipe.eval(self.source, len(key_list), *key_list, *self._argv(args))

    @staticmethod
    def _argv(args: Mapping[str, Any] | None) -> list[str]:
        return [json.dumps(dict(args or {}))]
