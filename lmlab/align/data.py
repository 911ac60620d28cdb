"""Local JSONL loaders for preference and chat data in the common Hugging Face layouts, and a byte tokenizer.

Preference rows (any of):
    {"prompt": str, "chosen": str, "rejected": str}                               (standard, TRL)
    {"prompt": [msgs], "chosen": [msgs], "rejected": [msgs]}                     (conversational, TRL)
    {"chosen": [msgs ... assistant], "rejected": [msgs ... assistant]}           (implicit prompt, HH-style)
  -> {"prompt": [msgs], "chosen": str, "rejected": str}
Chat rows (any of):
    {"messages": [{"role", "content"}]}                                           (OpenAI / TRL)
    {"conversations": [{"from": "human"|"gpt"|"system", "value"}]}                (ShareGPT)
    {"prompt": str, "completion": str}                                            (prompt-completion)
  -> [{"role", "content"}, ...]
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

Messages = list[dict]
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system"}


def read_jsonl(path: Union[str, Path]) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    rows = []
    with path.open() as f:
        for i, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: invalid JSON ({e.msg})") from None
    return rows


def _as_messages(x, where: str) -> Messages:
    if isinstance(x, str):
        return [{"role": "user", "content": x}]
    if isinstance(x, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in x):
        return [{"role": m["role"], "content": m["content"]} for m in x]
    raise ValueError(f"{where}: expected a string or a list of {{role, content}} messages")


def _last_assistant(x, where: str) -> str:
    if isinstance(x, str):
        return x
    msgs = _as_messages(x, where)
    if msgs[-1]["role"] != "assistant":
        raise ValueError(f"{where}: last message must be the assistant's")
    return msgs[-1]["content"]


def parse_preference(row: dict, where: str = "row") -> dict:
    if "chosen" not in row or "rejected" not in row:
        raise ValueError(f"{where}: missing key 'chosen'/'rejected' (keys: {', '.join(sorted(row))})")
    if "prompt" in row:
        prompt = _as_messages(row["prompt"], f"{where}.prompt")
    else:  # implicit prompt: the shared prefix of the two conversations
        c, r = _as_messages(row["chosen"], f"{where}.chosen"), _as_messages(row["rejected"], f"{where}.rejected")
        n = 0
        while n < min(len(c), len(r)) - 1 and c[n] == r[n]:
            n += 1
        prompt = c[:n]
    return {"prompt": prompt, "chosen": _last_assistant(row["chosen"], f"{where}.chosen"),
            "rejected": _last_assistant(row["rejected"], f"{where}.rejected")}


def parse_chat(row: dict, where: str = "row") -> Messages:
    if "messages" in row:
        return _as_messages(row["messages"], f"{where}.messages")
    if "conversations" in row:
        out = []
        for m in row["conversations"]:
            role = _SHAREGPT_ROLES.get(m.get("from", ""))
            if role is None:
                raise ValueError(f"{where}.conversations: unknown speaker {m.get('from')!r}")
            out.append({"role": role, "content": m["value"]})
        return out
    if "prompt" in row and "completion" in row:
        return _as_messages(row["prompt"], f"{where}.prompt") + [{"role": "assistant", "content": row["completion"]}]
    raise ValueError(f"{where}: expected 'messages', 'conversations' or 'prompt'+'completion' "
                     f"(keys: {', '.join(sorted(row))})")


def load_preferences(path: Union[str, Path]) -> list[dict]:
    return [parse_preference(r, f"{path}:{i}") for i, r in enumerate(read_jsonl(path), 1)]


def load_chat(path: Union[str, Path]) -> list[Messages]:
    return [parse_chat(r, f"{path}:{i}") for i, r in enumerate(read_jsonl(path), 1)]


class ByteTokenizer:
    """UTF-8 bytes 0..255, then EOS = 256 and PAD = 257: a tokenizer that needs no training or download."""

    vocab_size = 258
    eos_id = 256
    pad_id = 257

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")
