"""Every Redis key is named in one module: no other product module spells out a dream:* key."""

from __future__ import annotations

import re

from tests.support import ROOT

# A string literal that starts a Redis key name. Button custom ids ("dream:r:<job>") are Discord's, not Redis'.
KEY_LITERAL = re.compile(r"""(?<![\w.])(?:r|rf|f)?["']dream:(?![ruvid]:|"|')""")


def test_no_module_but_keys_names_a_redis_key():
    offenders = []
    for folder in ("bot", "worker", "dreamcore"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == "keys.py":
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if KEY_LITERAL.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "Redis key names belong in dreamcore/keys.py:\n" + "\n".join(offenders)


def test_the_check_catches_a_key_literal():
    assert KEY_LITERAL.search('    return f"dream:result:{job_id}"')
    assert KEY_LITERAL.search("STATS = 'dream:stats'")
    assert not KEY_LITERAL.search('custom_id=f"dream:r:{job_id}"')
    assert not KEY_LITERAL.search('anything else that starts with "dream:" is answered')
