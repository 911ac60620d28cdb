"""Shared pieces of the simple-evals formats: the multiple-choice template, response normalisation, and
"take the last match" extraction."""
from __future__ import annotations

import re
from typing import Optional

# simple-evals QUERY_TEMPLATE_MULTICHOICE (MMLU, GPQA)
MULTICHOICE_TEMPLATE = (
    "Answer the following multiple choice question. The last line of your response should be of the following "
    "format: 'Answer: $LETTER' (without quotes) where LETTER is one of ABCD. Think step by step before "
    "answering.\n\n{question}\n\nA) {A}\nB) {B}\nC) {C}\nD) {D}"
)
ANSWER_PATTERN_MULTICHOICE = r"(?i)Answer[ \t]*:[ \t]*\$?([A-D])\$?"
ANSWER_PATTERN = r"(?i)Answer\s*:\s*([^\n]+)"


def normalize_response(text: str) -> str:
    """Strip the markdown/LaTeX wrappers models put around a final answer ("**Answer: B**",
    "Answer: $\\boxed{B}$", "Answer: \\(\\text{C}\\)") so the answer regex sees the bare letter."""
    for a, b in (("**", ""), ("$\\boxed{", ""), ("}$", ""), ("\\$", ""), ("$\\text{", ""), ("$", ""),
                 ("\\mathrm{", ""), ("\\{", ""), ("\\text", ""), ("\\(", ""), ("\\)", ""), ("\\mathbf{", ""),
                 ("{", ""), ("\\boxed", "")):
        text = text.replace(a, b)
    return text


def last_match(pattern: str, text: str, group: int = 1) -> Optional[str]:
    """Group `group` of the LAST match of `pattern` in `text` (None if none): a model that restates the format
    ("... in the form Answer: $LETTER ...") before answering is scored on its final answer."""
    m = None
    for m in re.finditer(pattern, text):
        pass
    return m.group(group) if m is not None else None


def extract_choice(response: str) -> Optional[str]:
    got = last_match(ANSWER_PATTERN_MULTICHOICE, normalize_response(response))
    return got.upper() if got else None


def last_boxed(text: str) -> Optional[str]:
    """Contents of the last \\boxed{...} (or \\fbox{...}), with nested braces matched."""
    i = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if i < 0:
        return None
    j = text.find("{", i)
    if j < 0:
        return None
    depth = 0
    for k in range(j, len(text)):
        if text[k] == "{":
            depth += 1
        elif text[k] == "}":
            depth -= 1
            if depth == 0:
                return text[j + 1:k]
    return None
