"""dreamcore/lua.py on a real Redis: named keys, constants and arguments reach the script, and what a caller or a
script file gets wrong is said by name before anything runs."""

from __future__ import annotations

import pytest

from dreamcore.lua import LuaScript


def _script(tmp_path, text: str, **kw) -> LuaScript:
    path = tmp_path / "probe.lua"
    path.write_text(text)
    return LuaScript(path, **kw)


def test_keys_constants_and_arguments_arrive_by_name(tmp_path, rconn):
    s = _script(tmp_path, "-- a comment line, left out of what is sent\n"
                          "return {K.a, #K.rest, K.rest[2], string.format(C.FMT, A.n), A.id}\n",
                keys=("a", "*rest"), consts={"FMT": "%016d:"})
    assert "a comment line" not in s.source
    got = s(rconn, keys={"a": "ka", "rest": ["x", "y"]}, args={"n": 42, "id": "1234567890123456789"})
    assert got == [b"ka", 2, b"y", b"0000000000000042:", b"1234567890123456789"]  # an id past 2**53, as sent


def test_a_key_missing_or_not_declared_is_named(tmp_path, rconn):
    s = _script(tmp_path, "return 1\n", keys=("a", "b"))
    with pytest.raises(ValueError, match=r"probe.lua: keys missing: \['b'\]"):
        s(rconn, keys={"a": "k"})
    with pytest.raises(ValueError, match=r"probe.lua: keys not declared: \['c'\]"):
        s(rconn, keys={"a": "k", "b": "k", "c": "k"})


def test_what_lua_would_misread_is_refused_at_load(tmp_path):
    with pytest.raises(ValueError, match="long brackets"):
        _script(tmp_path, "--[[ a block comment\n-- its second line ]]\nreturn 1\n")
    with pytest.raises(ValueError, match="past a Lua number's exact range"):
        _script(tmp_path, "return 1\n", consts={"BIG": 2**60})
    with pytest.raises(ValueError, match="only the last key"):
        _script(tmp_path, "return 1\n", keys=("*rest", "a"))
