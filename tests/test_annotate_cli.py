"""`lmlab annotate` from the shell: init, seed-bible, adduser, invite, import, export, backup, restore (in-process
through lmlab.cli.main), and bad input ending in one line naming the culprit."""
from __future__ import annotations

import json

import pytest

from lmlab.cli import main

from _annotate_db import fast_argon2  # noqa: F401 - autouse fixture


def run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_cli_flow(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LMLAB_ANNOTATE_PASSWORD", "admin-password")
    db = str(tmp_path / "a.db")
    assert run(["annotate", "init", "--db", db, "--admin", "alice", "--languages", "en,ar"], capsys)[0] == 0
    code, out, _ = run(["annotate", "seed-bible", "--db", db, "--languages", "en,ar", "--n", "3"], capsys)
    assert code == 0 and json.loads(out) == {"pairs": 6, "comparisons": 6}
    assert run(["annotate", "adduser", "--db", db, "bob", "--role", "reviewer", "--languages", "ar"], capsys)[0] == 0
    code, out, _ = run(["annotate", "invite", "--db", db, "--languages", "fa"], capsys)
    assert code == 0 and "/signup?token=" in out
    seeds = tmp_path / "s.jsonl"
    seeds.write_text(json.dumps({"prompt": "سلام", "completion": "سلام!", "language": "fa"}) + "\n")
    code, out, _ = run(["annotate", "import", "--db", db, str(seeds)], capsys)
    assert code == 0 and json.loads(out) == {"pairs": 1, "comparisons": 0}
    code, out, _ = run(["annotate", "export", "--db", db, "--out", str(tmp_path / "out")], capsys)
    assert code == 0 and json.loads(out) == {"sft": 0, "preferences": 0, "ratings": 0}   # nothing approved yet
    assert (tmp_path / "out" / "sft.jsonl").read_text() == ""
    code, out, _ = run(["annotate", "backup", "--db", db, str(tmp_path / "b.jsonl")], capsys)
    counts = json.loads(out)
    assert code == 0 and counts["users"] == 2 and counts["pairs"] == 7 and counts["invites"] == 1
    code, out, _ = run(["annotate", "restore", "--db", str(tmp_path / "copy.db"), str(tmp_path / "b.jsonl")], capsys)
    assert code == 0 and json.loads(out) == counts
    code, out, _ = run(["annotate", "migrate", "--db", str(tmp_path / "copy.db")], capsys)
    assert code == 0 and "0001" in out


@pytest.mark.parametrize("argv,needle", [
    (["annotate", "import", "--db", "{d}/a.db", "{d}/nope.jsonl"], "nope.jsonl: no such file"),
    (["annotate", "import", "--db", "{d}/a.db", "{d}/nolang.jsonl"], "nolang.jsonl:1: no 'language'"),
    (["annotate", "import", "--db", "{d}/a.db", "{d}/x.txt"], "expected .jsonl, .csv or a datasets folder"),
    (["annotate", "restore", "--db", "{d}/a.db", "{d}/nolang.jsonl"], "not an lmlab annotate backup"),
    (["annotate", "seed-bible", "--db", "{d}/a.db", "--languages", "xx"], "language 'xx'"),
    (["annotate", "seed-bible", "--db", "{d}/a.db", "--languages", "e n"], "language 'e'"),
    (["annotate", "init", "--db", "{d}/a.db", "--admin", "bad name!"], "username"),
    (["annotate", "export", "--db", "{d}/missing/dir/a.db", "--out", "{d}/o"], "does not exist"),
    (["annotate", "migrate", "--db", "postgresql+psycopg://nobody:x@127.0.0.1:1/none"], "database 127.0.0.1:1/none"),
    (["annotate", "adduser", "--db", "{d}/a.db", "carol", "--languages", "english"], "language 'english'"),
])
def test_bad_input_is_one_line(argv, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LMLAB_ANNOTATE_PASSWORD", "long-password")
    (tmp_path / "nolang.jsonl").write_text('{"prompt": "p", "completion": "c"}\n')
    (tmp_path / "x.txt").write_text("x\n")
    code, _, err = run([a.replace("{d}", str(tmp_path)) for a in argv], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("lmlab annotate: error: "), err
    assert needle in lines[0], lines[0]
