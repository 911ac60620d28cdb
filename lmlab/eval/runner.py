"""Evaluation runner: a task is data (documents) plus four small functions; the runner turns documents into
backend requests, batches them, scores the responses, and aggregates with bootstrap confidence intervals.

Request kinds (the three of lm-evaluation-harness):
- "loglikelihood"            multiple choice: sum log p(choice | prompt) for each choice -> argmax
- "loglikelihood_rolling"    perplexity: sum log p(text) over the whole document
- "generate_until"           free generation (chat or raw completion), scored by the task's extractor

    task = get_task("mmlu", limit=200)
    result = evaluate(task, load_backend("smollm2"), batch_size=8)
    print(result.markdown()); result.save("out/mmlu.json")
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import numpy as np

from lmlab.backend import GenerationConfig

Kind = Literal["loglikelihood", "loglikelihood_rolling", "generate_until"]


@dataclass
class Task:
    name: str
    docs: list[dict]
    kind: Kind
    prompt: Callable[[dict], str]
    score: Callable[[dict, Any], dict[str, float]]     # (doc, response) -> per-document metrics
    primary: str                                       # headline metric name
    choices: Optional[Callable[[dict], list[str]]] = None   # loglikelihood only
    category: Optional[Callable[[dict], str]] = None
    gen: GenerationConfig = field(default_factory=GenerationConfig)
    chat: bool = True                                  # generate_until: send the prompt as one user turn
    system: Optional[str] = None
    extra: dict = field(default_factory=dict)          # e.g. k values for pass@k


@dataclass
class EvalResult:
    task: str
    model: str
    n: int
    primary: str
    metrics: dict[str, float]
    ci: dict[str, tuple[float, float]]
    categories: dict[str, dict[str, float]]
    samples: list[dict]
    seconds: float
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        from lmlab.io import atomic_write_text

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1, default=str))

    def markdown(self) -> str:
        lines = [f"### {self.task} — {self.model} (n={self.n}, {self.seconds:.0f} s)", "",
                 "| metric | value | 95% CI |", "|---|---|---|"]
        for k, v in self.metrics.items():
            lo, hi = self.ci.get(k, (math.nan, math.nan))
            lines.append(f"| {k} | {v:.4f} | [{lo:.4f}, {hi:.4f}] |")
        if self.categories:
            lines += ["", f"| category | n | {self.primary} |", "|---|---|---|"]
            for c, m in sorted(self.categories.items()):
                lines.append(f"| {c} | {int(m['n'])} | {m[self.primary]:.4f} |")
        return "\n".join(lines)


def bootstrap_ci(values, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean: resample documents with replacement n_boot times."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return (math.nan, math.nan)
    if x.size == 1:
        return (float(x[0]), float(x[0]))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    means = x[idx].mean(axis=1)
    return (float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2)))


def _new_bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


def _batches(xs: list, size: int):
    for i in range(0, len(xs), size):
        yield xs[i:i + size]


class TaskDataError(ValueError):
    """A task's documents lack a field its prompt or scorer reads (a data file in the wrong format)."""


def check_documents(task: Task, docs: list[dict]) -> None:
    """Build every prompt (and choices, category) once before any request, so a data file with the wrong
    fields fails at once, naming the document and the field, instead of after hours of generation."""
    for i, d in enumerate(docs):
        if not isinstance(d, dict):
            raise TaskDataError(f"task {task.name}: document {i} is a {type(d).__name__}, not an object")
        try:
            task.prompt(d)
            if task.choices is not None:
                task.choices(d)
            if task.category is not None:
                task.category(d)
        except KeyError as e:
            raise TaskDataError(f"task {task.name}: document {i} has no field {e.args[0]!r} "
                                f"(fields: {', '.join(map(str, d)) or 'none'})") from None
        except (IndexError, TypeError, AttributeError, ValueError) as e:
            raise TaskDataError(f"task {task.name}: document {i} does not fit the task ({type(e).__name__}: "
                                f"{str(e)[:120]})") from None


def run_requests(task: Task, backend, docs: list[dict], batch_size: int, progress: bool) -> list[Any]:
    """One response per document: list[float] (choice log-likelihoods), float (rolling), or list[str] (samples)."""
    bars: list = []
    try:
        return _run_requests(task, backend, docs, batch_size, progress, bars)
    finally:
        for bar in bars:  # closed on errors too: an error message must not land on a progress bar's line
            bar.close()


def _run_requests(task: Task, backend, docs: list[dict], batch_size: int, progress: bool, bars: list) -> list[Any]:
    def _progress(total: int, desc: str, enabled: bool):
        bars.append(_new_bar(total, desc, enabled))
        return bars[-1]

    if task.kind == "loglikelihood":
        assert task.choices is not None, f"task {task.name}: loglikelihood needs choices"
        flat = [(i, task.prompt(d), c) for i, d in enumerate(docs) for c in task.choices(d)]
        out: list[list[float]] = [[] for _ in docs]
        bar = _progress(len(flat), task.name, progress)
        for chunk in _batches(flat, batch_size):
            lps = backend.logprobs([p for _, p, _ in chunk], [c for _, _, c in chunk])
            for (i, _, _), lp in zip(chunk, lps):
                out[i].append(float(lp))
            bar.update(len(chunk))
        bar.close()
        return out
    if task.kind == "loglikelihood_rolling":
        out_f: list[float] = []
        bar = _progress(len(docs), task.name, progress)
        for chunk in _batches(docs, batch_size):
            out_f += [float(s) for s in backend.score([task.prompt(d) for d in chunk])]
            bar.update(len(chunk))
        bar.close()
        return out_f
    if task.kind == "generate_until":
        out_s: list[list[str]] = []
        bar = _progress(len(docs), task.name, progress)
        for chunk in _batches(docs, batch_size):
            if task.chat:
                convs = [([{"role": "system", "content": task.system}] if task.system else [])
                         + [{"role": "user", "content": task.prompt(d)}] for d in chunk]
                out_s += backend.chat(convs, task.gen)
            else:
                out_s += backend.generate([task.prompt(d) for d in chunk], task.gen)
            bar.update(len(chunk))
        bar.close()
        return out_s
    raise ValueError(f"task {task.name}: unknown request kind {task.kind!r}")


def evaluate(task: Task, backend, limit: Optional[int] = None, batch_size: int = 8, progress: bool = True,
             n_boot: int = 2000, seed: int = 0) -> EvalResult:
    docs = task.docs[:limit] if limit else list(task.docs)
    if not docs:
        raise ValueError(f"task {task.name}: no documents to evaluate")
    check_documents(task, docs)
    t0 = time.perf_counter()
    responses = run_requests(task, backend, docs, batch_size, progress)
    per_doc = []
    for i, (d, r) in enumerate(zip(docs, responses)):
        try:
            per_doc.append(task.score(d, r))
        except KeyError as e:
            raise TaskDataError(f"task {task.name}: document {i} has no field {e.args[0]!r} "
                                f"(fields: {', '.join(map(str, d)) or 'none'})") from None
    names = list(per_doc[0].keys())
    metrics, ci = {}, {}
    for k in names:
        vals = [m[k] for m in per_doc]
        metrics[k] = float(np.nanmean(vals))
        ci[k] = bootstrap_ci(vals, n_boot=n_boot, seed=seed)
    if task.kind == "loglikelihood_rolling" and "nll" in names and "bytes" in names:
        # corpus-level bits per byte: total nll over total bytes (not a mean of per-document ratios)
        tot_nll = sum(m["nll"] for m in per_doc)
        tot_b = sum(m["bytes"] for m in per_doc)
        metrics["bits_per_byte"] = tot_nll / (tot_b * math.log(2))
    categories: dict[str, dict[str, float]] = {}
    if task.category is not None:
        groups: dict[str, list[dict]] = {}
        for d, m in zip(docs, per_doc):
            groups.setdefault(task.category(d), []).append(m)
        for c, ms in groups.items():
            categories[c] = {"n": float(len(ms)), **{k: float(np.nanmean([m[k] for m in ms])) for k in names}}
    samples = [{"doc": i, "prompt": task.prompt(d) if task.kind != "loglikelihood_rolling" else None,
                "response": r, "metrics": m} for i, (d, r, m) in enumerate(zip(docs, responses, per_doc))]
    return EvalResult(task.name, getattr(backend, "name", type(backend).__name__), len(docs), task.primary,
                      metrics, ci, categories, samples, time.perf_counter() - t0,
                      {"batch_size": batch_size, "limit": limit, "gen": asdict(task.gen), "chat": task.chat})


# ---------------------------------------------------------------------------------------------------------
# Tasks as data: a JSONL file plus a small spec (dict or YAML)
#
#   name: arc_like
#   data: path/to/test.jsonl
#   kind: loglikelihood
#   prompt: "Question: {question}\nAnswer:"
#   choices: [" {A}", " {B}", " {C}", " {D}"]       # or choices_field: options  (a list in each row)
#   target: "{label}"                                 # index, or a letter A-Z
#   category: "{subject}"
#
#   kind: generate_until -> target, extract (regex, the LAST match's group 1 wins), max_new_tokens, stop, chat
#   kind: loglikelihood_rolling -> prompt is the text
# ---------------------------------------------------------------------------------------------------------
SPEC_KEYS = {"name", "data", "kind", "prompt", "choices", "choices_field", "target", "category", "extract",
             "max_new_tokens", "stop", "chat", "system", "limit"}


def read_jsonl(path: str | Path) -> list[dict]:
    """Objects, one per line; a file that is not UTF-8 JSON lines fails naming the file and the line."""
    import gzip

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"task data not found: {path}")
    if path.is_dir():
        raise TaskDataError(f"task data {path}: is a directory, expected a .jsonl file")
    opener = gzip.open if path.suffix == ".gz" else open
    rows: list[dict] = []
    ln = 0
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for ln, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise TaskDataError(f"task data {path}:{ln}: expected a JSON object, got {type(row).__name__}")
                rows.append(row)
    except UnicodeDecodeError as e:
        raise TaskDataError(f"task data {path}:{ln + 1}: not UTF-8 text ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise TaskDataError(f"task data {path}:{ln}: not a JSON line ({e.msg})") from None
    except (OSError, EOFError) as e:  # a truncated or fake .gz
        raise TaskDataError(f"task data {path}: cannot be read ({type(e).__name__}: {e})") from None
    if not rows:
        raise TaskDataError(f"task data {path}: no documents (the file is empty)")
    return rows


def _target_index(t: str, n: int) -> int:
    t = str(t).strip()
    if t.isdigit():
        return int(t)
    if len(t) == 1 and t.upper().isalpha():
        return ord(t.upper()) - ord("A")
    raise ValueError(f"target {t!r} is neither an index nor a letter (with {n} choices)")


def task_from_spec(spec: dict | str | Path) -> Task:
    from lmlab.config import ConfigError
    if not isinstance(spec, dict):
        import yaml
        p = Path(spec)
        if not p.exists():
            raise FileNotFoundError(f"task spec not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(f"task spec {p}: not UTF-8 text") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise ConfigError(f"task spec {p}{f' line {mark.line + 1}' if mark else ''}: "
                              f"{getattr(e, 'problem', None) or 'invalid YAML'}") from None
        if loaded is None:
            raise ConfigError(f"task spec {p}: the file is empty")
        if not isinstance(loaded, dict):
            raise ConfigError(f"task spec {p}: top level must be a mapping, got {type(loaded).__name__}")
        spec = loaded
        if not isinstance(spec.get("data", ""), str):
            raise ConfigError(f"task spec {p}: data must be a path, got {spec['data']!r}")
        spec["data"] = str(p.parent / spec.get("data", ""))
    bad = set(spec) - SPEC_KEYS
    if bad:
        raise ConfigError(f"task spec: unknown key(s) {sorted(bad)}; allowed: {sorted(SPEC_KEYS)}")
    for k in ("name", "data", "kind", "prompt"):
        if k not in spec:
            raise ConfigError(f"task spec: missing key {k!r}")
    kind = spec["kind"]
    docs = read_jsonl(spec["data"])[: spec.get("limit")]
    fmt = lambda tmpl: (lambda d: tmpl.format(**d))  # noqa: E731
    prompt = fmt(spec["prompt"])
    category = fmt(spec["category"]) if "category" in spec else None
    if kind == "loglikelihood":
        if "choices_field" in spec:
            choices = lambda d: [str(c) for c in d[spec["choices_field"]]]  # noqa: E731
        elif "choices" in spec:
            choices = lambda d: [c.format(**d) for c in spec["choices"]]  # noqa: E731
        else:
            raise ConfigError("task spec: loglikelihood needs 'choices' or 'choices_field'")
        tgt = fmt(spec.get("target", "{label}"))

        def score(d, lps):
            gold = _target_index(tgt(d), len(lps))
            cs = choices(d)
            norm = [lp / max(len(c), 1) for lp, c in zip(lps, cs)]
            return {"acc": float(int(np.argmax(lps)) == gold), "acc_norm": float(int(np.argmax(norm)) == gold)}
        return Task(spec["name"], docs, kind, prompt, score, "acc", choices=choices, category=category)
    if kind == "loglikelihood_rolling":
        def score_r(d, lp):
            text = prompt(d)
            return {"nll": -lp, "bytes": float(len(text.encode())), "words": float(len(text.split()))}
        return Task(spec["name"], docs, kind, prompt, score_r, "nll", category=category)
    if kind == "generate_until":
        from lmlab.eval.tasks.common import last_match, normalize_response
        tgt = fmt(spec.get("target", "{answer}"))
        pattern = spec.get("extract", r"(?i)Answer\s*:\s*([^\n]+)")

        def score_g(d, outs):
            got = [last_match(pattern, normalize_response(o)) for o in outs]
            gold = tgt(d).strip()
            return {"exact_match": float(np.mean([(g or "").strip() == gold for g in got]))}
        gen = GenerationConfig(max_new_tokens=spec.get("max_new_tokens", 256), stop=list(spec.get("stop", [])))
        return Task(spec["name"], docs, kind, prompt, score_g, "exact_match", category=category, gen=gen,
                    chat=spec.get("chat", True), system=spec.get("system"))
    raise ConfigError(f"task spec: kind must be loglikelihood, loglikelihood_rolling or generate_until, "
                      f"got {kind!r}")
