"""dvc.yaml's code deps are exactly the project files each stage's entry module may execute."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from clap.stages import deps as stage_deps
from clap.stages.deps import DepsError, Project, check_dvc_yaml, import_closure, rewrite_deps, wanted_code_deps

REPO = Path(__file__).resolve().parents[1]


def test_every_stage_declares_exactly_the_code_it_imports():
    results = check_dvc_yaml(REPO / "dvc.yaml")
    assert {r.stage for r in results} >= {"corpus", "ingest", "normalize", "captions", "shards", "train"}
    problems = [line for result in results for line in result.problems()]
    assert not problems, (
        "dvc.yaml deps are off (run `python -m clap.stages.deps` for the lists to paste, "
        "or `python -m clap.stages.deps --write`):\n" + "\n".join(problems))


# What Python really imports: every `import` statement executed while importing each stage's entry
# module, recorded by wrapping builtins.__import__, gives the graph of module-level imports. The
# project modules reachable from a stage must all be in its AST closure (which also holds the
# function-level imports, so it may be larger).
_RECORD_IMPORTS = textwrap.dedent("""
    import builtins, importlib, importlib.util, json, sys
    edges, real_import = {}, builtins.__import__
    def recording_import(name, globals=None, locals=None, fromlist=(), level=0):
        module = real_import(name, globals, locals, fromlist, level)
        importer = (globals or {}).get("__name__", "")
        if importer.startswith("clap"):
            package = (globals or {}).get("__package__") or ""
            target = importlib.util.resolve_name("." * level + name, package) if level else name
            parts = target.split(".")
            found = {".".join(parts[: i + 1]) for i in range(len(parts))}
            found |= {f"{target}.{item}" for item in fromlist or () if f"{target}.{item}" in sys.modules}
            edges.setdefault(importer, set()).update(m for m in found if m.startswith("clap"))
        return module
    builtins.__import__ = recording_import
    for entry in sys.argv[1:]:
        importlib.import_module(entry)
    files = {name: getattr(sys.modules.get(name), "__file__", None) for name in sys.modules if name.startswith("clap")}
    print(json.dumps({"edges": {k: sorted(v) for k, v in edges.items()}, "files": files}))
""")


def test_the_closure_holds_everything_python_imports_for_each_stage():
    results = check_dvc_yaml(REPO / "dvc.yaml")
    entries = sorted({r.entry for r in results})
    done = subprocess.run([sys.executable, "-c", _RECORD_IMPORTS, *entries], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    edges, files = seen["edges"], seen["files"]
    project = Project(REPO)
    for result in results:
        reached, stack = set(), [result.entry, "clap", "clap.stages"]
        while stack:
            name = stack.pop()
            if name not in reached:
                reached.add(name)
                stack += edges.get(name, [])
        imported = {project.relative(Path(files[name])) for name in reached if files.get(name)}
        assert imported - set(result.closure) == set(), f"stage {result.stage}: imported but not in the closure"


def write_project(root: Path, files: dict[str, str]) -> Project:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return Project(root)


def test_closure_follows_function_level_relative_and_dynamic_imports(tmp_path):
    project = write_project(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/stages/__init__.py": "",
        "pkg/stages/run.py": """
            from pkg.core import helpers
            from ..util import tool as _tool
            def main():
                import pkg.lazy.deep
                import importlib
                importlib.import_module("pkg.plugin")
                return importlib.import_module(".rel", "pkg.lazy")
        """,
        "pkg/core/__init__.py": "from .base import Base\n",
        "pkg/core/base.py": "import numpy\nBase = object\n",
        "pkg/core/helpers.py": """
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from pkg import typing_only
            else:
                from pkg import runtime_branch
        """,
        "pkg/core/unused.py": "",
        "pkg/util.py": "tool = 1\n",
        "pkg/lazy/__init__.py": "",
        "pkg/lazy/deep.py": "",
        "pkg/lazy/rel.py": "",
        "pkg/plugin.py": "",
        "pkg/typing_only.py": "",
        "pkg/runtime_branch.py": "",
        "other.py": "",
    })
    closure = import_closure("pkg.stages.run", project)
    assert sorted(closure) == [
        "pkg/__init__.py", "pkg/core/__init__.py", "pkg/core/base.py", "pkg/core/helpers.py",
        "pkg/lazy/__init__.py", "pkg/lazy/deep.py", "pkg/lazy/rel.py", "pkg/plugin.py", "pkg/runtime_branch.py",
        "pkg/stages/__init__.py", "pkg/stages/run.py", "pkg/util.py",
    ]
    assert closure["pkg/core/base.py"] == "pkg/core/__init__.py"  # who imports it, for the message
    # a directory is named only when every file below it is in the closure
    assert wanted_code_deps(closure, project) == [
        "pkg/__init__.py", "pkg/core/__init__.py", "pkg/core/base.py", "pkg/core/helpers.py", "pkg/lazy",
        "pkg/plugin.py", "pkg/runtime_branch.py", "pkg/stages", "pkg/util.py",
    ]


def test_check_names_the_stage_and_the_missing_or_extra_file(tmp_path):
    write_project(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "def f():\n    from pkg import b\n",
        "pkg/b.py": "",
        "pkg/c.py": "",
    })
    (tmp_path / "dvc.yaml").write_text(textwrap.dedent("""\
        stages:
          one:
            cmd: python -m pkg.a --params params.yaml
            deps:
              - data/in   # data stays
              - pkg/a.py
              - pkg/c.py
            outs:
              - data/out
          shell:
            cmd: echo hi
    """))
    (result,) = check_dvc_yaml(tmp_path / "dvc.yaml")
    assert result.problems() == [
        "stage one: missing dep pkg/__init__.py",
        "stage one: missing dep pkg/b.py (imported by pkg/a.py)",
        "stage one: extra dep pkg/c.py",
    ]
    assert stage_deps.main(["--dvc-yaml", str(tmp_path / "dvc.yaml"), "--check"]) == 1
    assert stage_deps.main(["--dvc-yaml", str(tmp_path / "dvc.yaml"), "--write"]) == 0
    text = (tmp_path / "dvc.yaml").read_text()
    assert "      - data/in   # data stays\n      - pkg/__init__.py\n      - pkg/a.py\n      - pkg/b.py\n    outs:" in text
    (result,) = check_dvc_yaml(tmp_path / "dvc.yaml")
    assert result.ok
    assert stage_deps.main(["--dvc-yaml", str(tmp_path / "dvc.yaml"), "--check"]) == 0


def test_rewrite_adds_a_deps_key_when_the_stage_has_none():
    text = "stages:\n  a:\n    cmd: python -m pkg.a\n    outs:\n      - x\n  b:\n    cmd: y\n"
    assert rewrite_deps(text, "a", ["pkg/a.py"]) == (
        "stages:\n  a:\n    cmd: python -m pkg.a\n    deps:\n      - pkg/a.py\n    outs:\n      - x\n  b:\n    cmd: y\n")
    with pytest.raises(DepsError, match="'c' not found"):
        rewrite_deps(text, "c", [])


def test_an_unparsable_project_file_is_named(tmp_path):
    project = write_project(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "import pkg.b\n", "pkg/b.py": "def (:\n"})
    with pytest.raises(DepsError, match=r"pkg/b.py: cannot parse"):
        import_closure("pkg.a", project)
