#!/usr/bin/env python3
"""Writes fuzz/corpus/session/: hostile session files for the session loader's fuzz target
(fuzz/fuzz_targets/session.rs) and its replay test (tests/fuzz_session.rs).

A file named `ok-*.json` is a session the loader must accept; every other file must be
refused with a one-line error. Run from the repository root: python3 scripts/make_session_corpus.py
"""
import copy
import json
import os

OUT = "fuzz/corpus/session"

BASE = {
    "version": 1,
    "id": "20250101-120000-000",
    "created": "2025-01-01T12:00:00.000Z",
    "updated": "2025-01-01T12:05:00.000Z",
    "model": {"path": "/models/nano", "config_hash": "0123456789abcdef"},
    "sampling": {
        "temperature": 0.6,
        "top_k": 20,
        "top_p": 0.95,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "seed": 42,
    },
    "thinking": {"budget": 512, "min_tokens": 0, "closing_message": None, "grace_tokens": 0},
    "system": "Be brief.",
    "turns": [
        {
            "user": "2+2?",
            "reasoning": "Two plus two.",
            "answer": "4",
            "stats": {
                "prompt_tokens": 20,
                "reasoning_tokens": 5,
                "completion_tokens": 2,
                "reused_tokens": 0,
                "ttft_ms": 120.0,
                "decode_tokens_per_s": 33.3,
                "finish_reason": "stop",
            },
        },
        {"user": "and again?"},
    ],
}


def dump(v):
    return json.dumps(v, indent=2, ensure_ascii=False).encode() + b"\n"


def with_(path, value, base=BASE):
    """BASE with the field at `path` (a list of keys/indices) set to `value`."""
    v = copy.deepcopy(base)
    cur = v
    for k in path[:-1]:
        cur = cur[k]
    cur[path[-1]] = value
    return v


def without(path):
    v = copy.deepcopy(BASE)
    cur = v
    for k in path[:-1]:
        cur = cur[k]
    del cur[path[-1]]
    return v


def replace_number(text, field, raw):
    """Re-serialises with `"field": <raw>` where raw is JSON text Python cannot produce."""
    marker = "__RAW__"
    return text.replace(b'"' + marker.encode() + b'"', raw.encode()).replace(
        marker.encode(), raw.encode()
    )


def raw(path, text):
    return replace_number(dump(with_(path, "__RAW__")), path[-1], text)


full = dump(BASE)
minimal = {
    "version": 1,
    "id": "a",
    "created": "",
    "updated": "",
    "model": {"path": "", "config_hash": ""},
    "sampling": {},
    "thinking": {},
}
old_gguf = with_(["model"], {"path": "/models/nano.Q4_K_M.gguf", "config_hash": ""})
new_identity = with_(
    ["model"],
    {"path": "/m", "config_hash": "0123456789abcdef", "weights": "fedcba9876543210"},
)
legacy_thinking = with_(["thinking"], {"enabled": False, "budget": 256})
unknown_fields = with_(["extra"], {"nested": [1, 2, {"x": None}]})

deep = b'{"version": 1, "extra": ' + b"[" * 20000 + b"]" * 20000 + b"}"
deep_obj = b'{"version": 1, "id": "a", "thinking": {"budget": ' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}}"

files = {
    # Must load.
    "ok-full.json": full,
    "ok-minimal.json": dump(minimal),
    "ok-old-gguf-empty-hash.json": dump(old_gguf),
    "ok-identity-with-weights.json": dump(new_identity),
    "ok-legacy-thinking.json": dump(legacy_thinking),
    "ok-unknown-fields.json": dump(unknown_fields),
    "ok-budget-words.json": dump(with_(["thinking", "budget"], "off")),
    "ok-unicode.json": dump(with_(["turns", 0, "user"], "héllo 世界 \U0001F600 \u202e")),
    # Truncated, empty, not JSON.
    "empty.json": b"",
    "truncated-half.json": full[: len(full) // 2],
    "truncated-one-byte.json": full[:1],
    "truncated-in-string.json": full[: full.index(b"Two plus") + 4],
    "not-json.json": b"my notes, not a session\n",
    "bom.json": b"\xef\xbb\xbf" + full,
    "nul-bytes.json": full[:40] + b"\x00\x00\x00" + full[40:],
    "trailing-garbage.json": full + b"}}}",
    "two-documents.json": full + full,
    "top-level-array.json": b"[" + full + b"]",
    "top-level-null.json": b"null",
    # Wrong types.
    "wrong-type-version-string.json": dump(with_(["version"], "1")),
    "wrong-type-turns-object.json": dump(with_(["turns"], {"user": "hi"})),
    "wrong-type-turns-null.json": dump(with_(["turns"], None)),
    "wrong-type-temperature-string.json": dump(with_(["sampling", "temperature"], "hot")),
    "wrong-type-model-string.json": dump(with_(["model"], "/models/nano")),
    "wrong-type-user-number.json": dump(with_(["turns", 0, "user"], 4)),
    "wrong-type-stats-array.json": dump(with_(["turns", 0, "stats"], [1, 2])),
    "wrong-type-seed-negative.json": dump(with_(["sampling", "seed"], -1)),
    "wrong-type-budget-bool.json": dump(with_(["thinking", "budget"], True)),
    "missing-id.json": dump(without(["id"])),
    "missing-model.json": dump(without(["model"])),
    "missing-version.json": dump(without(["version"])),
    # Huge numbers.
    "huge-version.json": raw(["version"], "99999999999999999999999"),
    "huge-version-float.json": raw(["version"], "1e400"),
    "huge-prompt-tokens.json": raw(["turns", 0, "stats", "prompt_tokens"], "1e30"),
    "huge-ttft.json": raw(["turns", 0, "stats", "ttft_ms"], "1e999"),
    "huge-budget.json": raw(["thinking", "budget"], "18446744073709551615"),
    "huge-min-tokens.json": raw(["thinking", "min_tokens"], "184467440737095516150"),
    "huge-top-k.json": raw(["sampling", "top_k"], "1073741824"),
    "huge-temperature-f32-overflow.json": raw(["sampling", "temperature"], "1e39"),
    "huge-exponent.json": raw(["sampling", "top_p"], "0.5e99999999999999999999"),
    # NaN-ish.
    "nan-literal.json": raw(["sampling", "temperature"], "NaN"),
    "infinity-literal.json": raw(["sampling", "top_p"], "Infinity"),
    "minus-infinity-literal.json": raw(["sampling", "min_p"], "-Infinity"),
    "nan-string.json": dump(with_(["sampling", "temperature"], "NaN")),
    "negative-zero-version.json": raw(["version"], "-0"),
    # Deep nesting.
    "deep-nesting-arrays.json": deep,
    "deep-nesting-objects-in-budget.json": deep_obj,
    # Unknown or wrong version.
    "unknown-version-2.json": dump(with_(["version"], 2)),
    "version-zero.json": dump(with_(["version"], 0)),
    "version-negative.json": dump(with_(["version"], -1)),
    # Out-of-range sampling (the same ranges as the flags and /set).
    "range-temperature-negative.json": dump(with_(["sampling", "temperature"], -5)),
    "range-temperature-high.json": dump(with_(["sampling", "temperature"], 5.5)),
    "range-top-p-high.json": dump(with_(["sampling", "top_p"], 1.5)),
    "range-min-p-negative.json": dump(with_(["sampling", "min_p"], -0.1)),
    "range-repetition-penalty-zero.json": dump(with_(["sampling", "repetition_penalty"], 0)),
    "range-presence-penalty-high.json": dump(with_(["sampling", "presence_penalty"], 3)),
    "range-top-k-high.json": dump(with_(["sampling", "top_k"], 16777217)),
    "range-budget-high.json": dump(with_(["thinking", "budget"], 1000001)),
    "range-budget-words.json": dump(with_(["thinking", "budget"], "lots")),
    # Text an error would echo: newlines, control characters, length.
    "echo-newlines-in-budget.json": dump(with_(["thinking", "budget"], "a\nb\r\nc\x1b[31m")),
    "echo-long-budget.json": dump(with_(["thinking", "budget"], "x" * 20000)),
    "echo-newline-id.json": dump(with_(["id"], "bad\nid")),
    "bad-id-path.json": dump(with_(["id"], "../../etc/passwd")),
    "bad-id-empty.json": dump(with_(["id"], "")),
    # Not UTF-8.
    "non-utf8-in-string.json": full.replace(b"Two plus two.", b"Two \xff\xfe two."),
    "non-utf8-lone-surrogate-escape.json": full.replace(b"Two plus two.", b"\\ud800"),
    "non-utf8-latin1.json": dump(with_(["turns", 0, "user"], "caf_")).replace(b"caf_", b"caf\xe9"),
    "non-utf8-key.json": full.replace(b'"system"', b'"sys\xfftem"'),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name in os.listdir(OUT):
        if name.endswith(".json"):
            os.remove(os.path.join(OUT, name))
    for name, data in sorted(files.items()):
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    print(f"{len(files)} files in {OUT}")


if __name__ == "__main__":
    main()
