"""The code each DVC stage runs, derived from its imports, against the deps dvc.yaml declares.

    python -m clap.stages.deps            # per stage: missing and extra code deps, then the deps lists
    python -m clap.stages.deps --check    # the same, exit status 1 when any stage is off
    python -m clap.stages.deps --write    # rewrite the code entries of every stage's deps in dvc.yaml

A stage's entry module is the ``-m`` module of its ``cmd`` (or a ``.py`` file named there). Its import
closure is every project file Python may execute for it: the entry module, each project module it
imports anywhere in the file (top level, inside functions, ``importlib.import_module("literal")``,
``__import__("literal")``), relative imports resolved, ``from package import name`` counting
``package/name.py`` when that is a module, the ``__init__.py`` of every package on the way, and so
on transitively. Imports under ``if TYPE_CHECKING:`` never run and do not count. Project modules are
those under the repository's top-level packages (directories with an ``__init__.py``, e.g. clap/,
flows/) and top-level ``*.py`` files; everything else (numpy, torch, ...) is pinned by the
environment, not by dvc.yaml.

A declared dep is code when it lies in a project package or ends in ``.py``; all other deps (data,
models, reports) are left as they are. The wanted code deps are the closure's files, with a directory
named instead of its files when every file below it (``__pycache__`` and ``*.pyc`` aside, as
.dvcignore has them) is in the closure. Missing: a closure file no declared dep covers. Extra: a
declared code dep that covers a file outside the closure (or does not exist).
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Sequence

import yaml

REPO = Path(__file__).resolve().parents[2]

_MODULE_FLAG = re.compile(r"(?:^|\s)-m\s+([A-Za-z_][\w.]*)")
_SCRIPT = re.compile(r"(?:^|\s)([\w./-]+\.py)(?:\s|$)")


class DepsError(ValueError):
    """dvc.yaml or a project file cannot be read as needed."""


# ----------------------------------------------------------------------------------------------
# The import closure
# ----------------------------------------------------------------------------------------------


@dataclass
class Project:
    """The repository's own modules: top-level packages and top-level ``*.py`` files."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        self.top_levels = {p.name for p in self.root.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
        self.top_levels |= {p.stem for p in self.root.glob("*.py")}

    def module_file(self, name: str) -> Path | None:
        """The file of project module ``name`` (``pkg/__init__.py`` for a package), or None."""
        parts = name.split(".")
        if parts[0] not in self.top_levels or not all(part.isidentifier() for part in parts):
            return None
        base = self.root.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        return None

    def module_name(self, path: Path) -> str:
        relative = Path(path).resolve().relative_to(self.root).with_suffix("")
        parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
        return ".".join(parts)

    def relative(self, path: Path) -> str:
        return Path(path).resolve().relative_to(self.root).as_posix()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST) -> Iterable[ast.AST]:
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _resolve_relative(package: str, name: str | None, level: int, where: str) -> str:
    """The absolute module of ``from <'.' * level><name> import ...`` inside ``package``."""
    parts = package.split(".") if package else []
    if level - 1 > len(parts) or (level - 1 == len(parts) and not name):
        raise DepsError(f"{where}: relative import beyond the top-level package")
    base = parts[: len(parts) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _literal(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def imported_names(source: str, module: str, is_package: bool, where: str = "<source>") -> list[str]:
    """Absolute names of every module ``source`` may import at run time (candidates: a name may be
    an attribute rather than a module; the caller keeps those that resolve to files)."""
    try:
        tree = ast.parse(source, filename=where)
    except SyntaxError as exc:
        raise DepsError(f"{where}: cannot parse ({exc.msg}, line {exc.lineno}); fix the file") from exc
    package = module if is_package else module.rpartition(".")[0]
    names: list[str] = []
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_relative(package, node.module, node.level, where) if node.level else node.module or ""
            names.append(base)
            names += [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]
        elif isinstance(node, ast.Call):
            names += _dynamic_import(node, package, where)
    return [name for name in names if name]


def _dynamic_import(call: ast.Call, package: str, where: str) -> list[str]:
    """``importlib.import_module("x")`` / ``import_module(".x", "pkg")`` / ``__import__("x")``."""
    func = call.func
    callee = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if callee not in ("import_module", "__import__") or not call.args:
        return []
    name = _literal(call.args[0])
    if name is None:
        return []
    if callee == "import_module" and name.startswith("."):
        anchor = _literal(call.args[1]) if len(call.args) > 1 else None
        anchor = anchor or next((_literal(k.value) for k in call.keywords if k.arg == "package"), None) or package
        level = len(name) - len(name.lstrip("."))
        return [_resolve_relative(anchor, name.lstrip(".") or None, level, where)]
    return [name]


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def import_closure(entry: str, project: Project) -> dict[str, str | None]:
    """Every project file (repo-relative, posix) that running module ``entry`` may execute, mapped
    to the file that first imports it (None for the entry module and its packages)."""
    if project.module_file(entry) is None:
        raise DepsError(f"entry module {entry!r} is not a project module under {project.root}")
    closure: dict[str, str | None] = {}
    queue: list[tuple[str, str | None]] = [(name, None) for name in _with_parents(entry)]
    seen: set[str] = set()
    while queue:
        name, importer = queue.pop(0)
        if name in seen:
            continue
        seen.add(name)
        path = project.module_file(name)
        if path is None:
            continue  # not ours (numpy, ...), or an attribute imported with "from"
        rel = project.relative(path)
        closure.setdefault(rel, importer)
        for imported in imported_names(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", rel):
            queue += [(parent, rel) for parent in _with_parents(imported) if parent not in seen]
    return closure


# ----------------------------------------------------------------------------------------------
# dvc.yaml: entries, declared deps, wanted deps
# ----------------------------------------------------------------------------------------------


@dataclass
class StageDeps:
    """One stage's declared deps against the code its entry module runs."""

    stage: str
    entry: str
    data_deps: list[str]
    code_deps: list[str]
    closure: dict[str, str | None]
    wanted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.extra

    def problems(self) -> list[str]:
        lines = []
        for rel in self.missing:
            via = self.closure[rel]
            lines.append(f"stage {self.stage}: missing dep {rel}" + (f" (imported by {via})" if via else ""))
        lines += [f"stage {self.stage}: extra dep {why}" for why in self.extra]
        return lines


def stage_entry(cmd: Any, project: Project) -> str | None:
    """The module a stage's ``cmd`` runs: ``python -m <module>`` or ``python <file>.py``."""
    commands = cmd if isinstance(cmd, list) else [cmd]
    for command in commands:
        text = str(command)
        if match := _MODULE_FLAG.search(text):
            return match.group(1)
        if (match := _SCRIPT.search(text)) and (project.root / match.group(1)).is_file():
            return project.module_name(project.root / match.group(1))
    return None


def is_code_dep(dep: str, project: Project) -> bool:
    first = PurePosixPath(dep).parts[0] if dep else ""
    return dep.endswith(".py") or first in project.top_levels


def _files_below(path: Path) -> list[Path]:
    """What DVC hashes for a directory dep (.dvcignore: ``__pycache__/``, ``*.pyc``)."""
    return sorted(p for p in path.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def wanted_code_deps(closure: Iterable[str], project: Project) -> list[str]:
    """The closure's files, each replaced by the highest directory below the root (and not the top
    package itself) whose every file is in the closure."""
    files = set(closure)
    wanted = set()
    for rel in files:
        chosen = rel
        parent = PurePosixPath(rel).parent
        while len(parent.parts) >= 2:  # clap/corpus may collapse, clap/ never does
            below = {project.relative(p) for p in _files_below(project.root / parent)}
            if not below <= files:
                break
            chosen = parent.as_posix()
            parent = parent.parent
        wanted.add(chosen)
    return sorted(wanted)


def compare(stage: str, entry: str, deps: Sequence[str], project: Project) -> StageDeps:
    closure = import_closure(entry, project)
    code = [d for d in deps if is_code_dep(d, project)]
    result = StageDeps(stage, entry, [d for d in deps if d not in code], code, closure,
                       wanted=wanted_code_deps(closure, project))
    covered: set[str] = set()
    for dep in code:
        path = project.root / dep
        if not path.exists():
            result.extra.append(f"{dep} (no such file)")
            continue
        below = {project.relative(p) for p in _files_below(path)} if path.is_dir() else {dep}
        covered |= below
        outside = sorted(below - set(closure))
        if outside:
            what = dep if not path.is_dir() else f"{dep} (holds {', '.join(outside)} outside the closure)"
            result.extra.append(what)
    result.missing = sorted(set(closure) - covered)
    return result


def load_stages(dvc_yaml: Path) -> dict[str, dict[str, Any]]:
    try:
        doc = yaml.safe_load(Path(dvc_yaml).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DepsError(f"{dvc_yaml}: cannot read ({exc})") from exc
    stages = (doc or {}).get("stages")
    if not isinstance(stages, dict):
        raise DepsError(f"{dvc_yaml}: no 'stages' mapping")
    return {name: (spec.get("do", spec) if isinstance(spec, dict) else {}) for name, spec in stages.items()}


def check_dvc_yaml(dvc_yaml: Path = REPO / "dvc.yaml", root: Path | None = None) -> list[StageDeps]:
    """A ``StageDeps`` for every stage of ``dvc_yaml`` whose cmd runs a project module."""
    project = Project(root or Path(dvc_yaml).resolve().parent)
    results = []
    for stage, spec in load_stages(dvc_yaml).items():
        entry = stage_entry(spec.get("cmd", ""), project)
        if entry is None or project.module_file(entry) is None:
            continue
        deps = [str(d) for d in spec.get("deps") or []]
        results.append(compare(stage, entry, deps, project))
    return results


# ----------------------------------------------------------------------------------------------
# Writing the deps lists back (text edit: comments and everything else in dvc.yaml stay)
# ----------------------------------------------------------------------------------------------


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_content(line: str) -> bool:
    return bool(line.strip()) and not line.lstrip().startswith("#")


def rewrite_deps(text: str, stage: str, deps: Sequence[str]) -> str:
    """``text`` (a dvc.yaml) with stage ``stage``'s ``deps`` list replaced by ``deps``."""
    lines = text.splitlines(keepends=True)
    head = next((i for i, line in enumerate(lines)
                 if re.fullmatch(rf" +{re.escape(stage)}:\s*", line.rstrip("\n"))), None)
    if head is None:
        raise DepsError(f"dvc.yaml: stage {stage!r} not found")
    stage_indent = _indent(lines[head])
    end = next((i for i in range(head + 1, len(lines))
                if _is_content(lines[i]) and _indent(lines[i]) <= stage_indent), len(lines))
    key = next((i for i in range(head + 1, end) if lines[i].strip() == "deps:"), None)
    key_indent = _indent(lines[key]) if key is not None else stage_indent + 2
    if key is None:  # no deps yet: add the key after the cmd
        cmd = next((i for i in range(head + 1, end) if lines[i].lstrip().startswith("cmd:")), head)
        key = cmd + 1
        lines.insert(key, " " * key_indent + "deps:\n")
        end += 1
    stop = next((i for i in range(key + 1, end) if _is_content(lines[i]) and _indent(lines[i]) <= key_indent), end)
    old_items = [line for line in lines[key + 1 : stop] if line.lstrip().startswith("- ")]
    dash = _indent(old_items[0]) if old_items else key_indent + 2
    kept = {line.strip()[2:].split(" #")[0].strip(): line for line in old_items}  # keeps their comments
    lines[key + 1 : stop] = [kept.get(dep, " " * dash + f"- {dep}\n") for dep in deps]
    return "".join(lines)


def wanted_deps(result: StageDeps) -> list[str]:
    """The stage's deps as they should read: its data deps as declared, then the wanted code deps."""
    return result.data_deps + result.wanted


def write_dvc_yaml(dvc_yaml: Path, results: Sequence[StageDeps]) -> list[str]:
    """Rewrite the deps of every stage that is off; returns the stages changed."""
    text = Path(dvc_yaml).read_text()
    changed = [r.stage for r in results if not r.ok or r.code_deps != r.wanted]
    for result in results:
        if result.stage in changed:
            text = rewrite_deps(text, result.stage, wanted_deps(result))
    Path(dvc_yaml).write_text(text)
    return changed


def report(results: Sequence[StageDeps]) -> str:
    """Problems first, then every stage's deps list as YAML to paste into dvc.yaml."""
    out = []
    for result in results:
        status = "ok" if result.ok else f"{len(result.missing)} missing, {len(result.extra)} extra"
        out.append(f"# {result.stage} ({result.entry}): {len(result.closure)} project files; {status}")
        out += [f"#   {line}" for line in result.problems()]
    out.append("")
    for result in results:
        out.append(f"  {result.stage}:")
        out.append("    deps:")
        out += [f"      - {dep}" for dep in wanted_deps(result)]
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clap.stages.deps", description=__doc__.splitlines()[0])
    parser.add_argument("--dvc-yaml", type=Path, default=REPO / "dvc.yaml", help="default: the repository's")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 when any stage's code deps are off")
    mode.add_argument("--write", action="store_true", help="rewrite the code deps in dvc.yaml (data deps stay)")
    args = parser.parse_args(argv)
    try:
        results = check_dvc_yaml(args.dvc_yaml)
    except DepsError as exc:
        print(f"clap.stages.deps: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(report(results))
    if args.write:
        changed = write_dvc_yaml(args.dvc_yaml, results)
        print(f"# rewrote the deps of: {', '.join(changed) or 'nothing'}", file=sys.stderr)
        return 0
    return 1 if args.check and not all(r.ok for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
