"""Package layering: imports point down, never up.

    base (config, registry, backend, io) -> nn -> models -> data -> train -> infer -> {align, eval}
        -> experiments (+ report) -> cli

A module may import from a lower layer or from its own package; never from a higher layer, and never from a
peer of its own layer (align and eval do not import each other). The issue's middle layer {data, train, infer}
is ordered inside (train loads data; infer loads checkpoints and tokenizers), so there is no cycle among them.

- base: top-level modules every layer may use. They import nothing from the packages above them statically;
  `backend.load_backend` and the registries reach lmlab.infer and the plugin packages at run time only.
- report.py (the claims table and plots of `lmlab reproduce`) serves the experiments only: experiments layer.
- a `cli.py` inside a package (train/cli.py, eval/cli.py, ...) counts as its package's layer; commands that
  need a higher layer (`lmlab list`, `lmlab data rephrase`) live in the top-level lmlab/cli.py.

Every import counts, including ones inside functions and under `if TYPE_CHECKING:`; dynamic imports
(importlib with a string, the registries' package walk) do not.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "lmlab"

BASE = ("config", "registry", "backend", "io", "resources", "argtypes")
RANK = {
    **{m: 0 for m in BASE},
    "nn": 1,
    "vision": 1.5,                 # beside nn: image encoders may use nn modules (an MoE MLP), never the reverse
    "models": 2,
    "data": 3,
    "train": 4,
    "infer": 5,
    "align": 6, "eval": 6,         # peers: neither imports the other
    "experiments": 7, "report": 7, "vlm_plots": 7,   # vlm_plots: VQA sample grids, beside report.py
    "annotate": 7,                 # the annotation platform: an application on top of align's data formats
    "report_html": 7, "forest": 7,                    # report.html, forest plots and `report diff`
    "vlm_figures": 7,              # boxes drawn on images, accuracy per aspect-ratio bucket
    "cli": 8,
}
PEERS_MAY_IMPORT = {0, 7}  # base modules use each other; experiments use report; align and eval stay apart

# Upward imports in files owned by other work in flight; each entry is (importer, imported) and names who
# removes it. Empty the list as they land; the test fails on any entry that no longer occurs.
ALLOWED: set[tuple[str, str]] = set()


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def group(mod: str) -> str:
    """'lmlab.data.rephrase' -> 'data'; 'lmlab.backend' -> 'backend'; 'lmlab' -> '' (the package itself)."""
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports_of(path: Path, root: Path = ROOT) -> list[tuple[str, int]]:
    """Every lmlab module a file imports (absolute or relative, at any depth), with line numbers."""
    mod = module_name(path, root)
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg.split(".")[:len(pkg.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if base == "lmlab":  # `from lmlab import data`: the submodule is what is imported
                out += [(f"lmlab.{a.name}", node.lineno) for a in node.names]
            else:
                out.append((base, node.lineno))
    return [(m, ln) for m, ln in out if m == "lmlab" or m.startswith("lmlab.")]


def upward_imports(root: Path = ROOT) -> list[tuple[str, str, int]]:
    """(importer, imported, line) for every import against the layer order under root/lmlab."""
    bad = []
    for path in sorted((root / "lmlab").rglob("*.py")):
        src = module_name(path, root)
        g = group(src)
        assert g in RANK or g == "", f"{src}: place lmlab/{g} in a layer of this test (RANK)"
        for dst, line in imports_of(path, root):
            h = group(dst)
            if g == "" or h == g or h == "":
                continue  # lmlab/__init__.py is empty; imports inside one package are free
            assert h in RANK, f"{src} imports {dst}: place lmlab/{h} in a layer of this test (RANK)"
            if RANK[h] > RANK[g] or (RANK[h] == RANK[g] and RANK[g] not in PEERS_MAY_IMPORT):
                bad.append((src, dst, line))
    return bad


def test_no_upward_import():
    found = upward_imports()
    bad = [f"{src} (layer {group(src)}) imports {dst} (layer {group(dst)}), line {line}"
           for src, dst, line in found if (src, dst) not in ALLOWED]
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)
    stale = ALLOWED - {(s, d) for s, d, _ in found}
    assert not stale, f"allow-list entries that no longer occur (remove them): {sorted(stale)}"


def test_layer_check_sees_every_kind_of_import(tmp_path):
    """Imports inside functions, relative imports, `from lmlab import x`, peers and the top layer all count."""
    nn = tmp_path / "lmlab" / "nn"
    nn.mkdir(parents=True)
    (nn / "x.py").write_text("import lmlab.config\nfrom lmlab.nn import attention\n"
                             "def g():\n    from lmlab.models.decoder import Decoder\n"
                             "from ..experiments import base\nfrom lmlab import eval\n")
    (tmp_path / "lmlab" / "align").mkdir()
    (tmp_path / "lmlab" / "align" / "y.py").write_text("from lmlab.eval.runner import evaluate\n"
                                                       "import lmlab.backend\nimport lmlab.cli\n")
    (tmp_path / "lmlab" / "backend.py").write_text("from lmlab.registry import BACKENDS\n")
    got = sorted((s, d) for s, d, _ in upward_imports(tmp_path))
    assert got == [("lmlab.align.y", "lmlab.cli"), ("lmlab.align.y", "lmlab.eval.runner"),
                   ("lmlab.nn.x", "lmlab.eval"), ("lmlab.nn.x", "lmlab.experiments"),
                   ("lmlab.nn.x", "lmlab.models.decoder")]


def _run(code: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                        "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_building_a_decoder_loads_no_process_package():
    """Model construction depends on nn and models only: no experiment, alignment, eval or inference module
    is imported (so an error in any of them cannot break building a Decoder)."""
    code = (
        "import sys, torch\n"
        "import lmlab.models.decoder as D\n"
        "from lmlab import registry\n"
        "from lmlab.config import ModelConfig\n"
        "m = D.Decoder(ModelConfig(vocab_size=64, d_model=32, n_layer=2, n_head=4, max_seq_len=16))\n"
        "m(torch.zeros(1, 8, dtype=torch.long))\n"
        "for reg in (registry.TOKEN_MIXERS, registry.CHANNEL_MIXERS, registry.RESIDUALS, registry.ROUTERS,\n"
        "            registry.PEFT_METHODS):\n"
        "    reg.load()  # every module a model can be built from\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[:2] in "
        "([\"lmlab\", \"experiments\"], [\"lmlab\", \"align\"], [\"lmlab\", \"eval\"], [\"lmlab\", \"infer\"]))\n"
        "print(bad)\n"
    )
    r = _run(code)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout


def test_lmlab_list_json_shows_every_registry(capsys):
    from lmlab.cli import main
    from lmlab.registry import ALL

    with pytest.raises(SystemExit) as e:
        main(["list", "--json"])
    assert e.value.code == 0
    table = json.loads(capsys.readouterr().out)
    assert set(table) == set(ALL)
    for kind in ("experiments", "token_mixers", "backends", "eval_tasks", "data_sources"):
        assert table[kind], f"lmlab list: no {kind}"
    for kind, rows in table.items():
        for name, what in rows.items():
            assert isinstance(what, str) and what.strip() and "\n" not in what, (kind, name, what)
    assert {"mmlu", "humaneval", "gsm8k"} <= set(table["eval_tasks"])
    assert {"embedded", "txt", "jsonl", "parquet", "hf"} <= set(table["data_sources"])
    assert {"lmlab", "hf", "openai"} <= set(table["backends"])
    with pytest.raises(SystemExit) as e:
        main(["list", "eval_tasks", "--json"])
    assert e.value.code == 0 and list(json.loads(capsys.readouterr().out)) == ["eval_tasks"]
