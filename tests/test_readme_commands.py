"""The README's commands, exactly as the README prints them, in a new shell on a fresh clone.

The slow test clones a copy of this repository (tiny corpus params committed) and runs, in one
``bash -lc`` shell whose PATH holds no virtual environment until the README's own activation line
puts one there: the quick start (``make repro``), ``source .venv/bin/activate``, then
``dvc exp run -S fusion=true``, ``dvc metrics diff``, ``dvc exp show`` and ``make report``. Each line
is read from README.md's code blocks, so the test follows the README.

To spare a 3-4 minute install, the clone's .venv is a real venv made from the base interpreter that
reuses this venv's installed packages through a .pth file (plus the clone's own root, as an editable
install would), with copies of the console scripts (dvc, prefect, ...) pointed at the clone's
python; its stamp file makes `make setup` a no-op. The main venv is never touched.

The fast tests check the wrong-interpreter guard of every stage and that no README command line
bypasses activation.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import yaml

from tests.repo_copy import REPO_ROOT, copy_repo, run, tiny_pipeline

README = REPO_ROOT / "README.md"
STEP_MARK = "@@step "
WRONG_INTERPRETER = re.compile(
    r"^clap: (?P<python>\S+) lacks the project's dependencies \(no module '(?P<module>[\w.]+)'\); "
    r"run 'make setup' then 'source \.venv/bin/activate' and re-run$"
)
STAGES = sorted(p.stem for p in (REPO_ROOT / "clap/stages").glob("*.py") if p.stem != "__init__")


# --- the README's code blocks -------------------------------------------------------------------------

def readme_command_lines(text: str) -> list[str]:
    """Every line of the README's ``bash`` code blocks (continuation lines joined), as printed."""
    lines: list[str] = []
    for block in re.findall(r"^```(?:bash|sh|shell)\n(.*?)^```", text, flags=re.M | re.S):
        pending = ""
        for line in block.splitlines():
            if line.rstrip().endswith("\\"):
                pending += line + "\n"
                continue
            lines.append(pending + line)
            pending = ""
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def command_part(line: str) -> str:
    """The command of a README line, without its trailing ``# comment``."""
    return re.split(r"\s+#\s", line, maxsplit=1)[0].strip()


def readme_line(command: str, text: str | None = None) -> str:
    """The README line (comment included) whose command is exactly ``command``; fails if none is."""
    lines = readme_command_lines(README.read_text() if text is None else text)
    found = [line for line in lines if command_part(line) == command]
    assert found, f"README.md prints no command line `{command}`; the test follows the README, so update both"
    return found[0]


def test_no_readme_command_bypasses_the_activated_venv() -> None:
    """`.venv/bin/dvc ...` runs the stages with the system python: the README activates instead."""
    bypassing = [line for line in readme_command_lines(README.read_text())
                 if re.search(r"(^|[\s;&|(])\.venv/bin/(?!activate\b)", command_part(line))]
    assert not bypassing, bypassing


def test_readme_parsing_follows_blocks_and_comments() -> None:
    text = "x\n```bash\nmake repro   # a # b\npython -m x \\\n    --flag\n# only a comment\n```\n```yaml\nk: v\n```\n"
    assert readme_command_lines(text) == ["make repro   # a # b", "python -m x \\\n    --flag"]
    assert readme_line("make repro", text) == "make repro   # a # b"
    with pytest.raises(AssertionError, match="no command line `k: v`"):
        readme_line("k: v", text)


# --- a stage started by the wrong interpreter ---------------------------------------------------------

def interpreter_without_project() -> str:
    """The interpreter this venv was made from: same Python, none of the project's packages."""
    in_venv = sys.prefix != sys.base_prefix
    base = getattr(sys, "_base_executable", None) if in_venv else shutil.which("python3", path="/usr/bin:/bin")
    if not base:
        pytest.skip("no interpreter outside the project's venv to start a stage with")
    probe = subprocess.run([base, "-c", "import importlib.util as u; print(u.find_spec('soundfile') is None)"],
                           capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    if probe.stdout.strip() != "True":
        pytest.skip(f"{base} has the project's dependencies installed")
    return base


@pytest.mark.parametrize("stage", STAGES)
def test_stage_started_by_an_interpreter_without_the_dependencies_names_the_fix(stage: str) -> None:
    python = interpreter_without_project()
    env = {"PATH": f"{Path(python).parent}{os.pathsep}/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
    proc = subprocess.run([python, "-m", f"clap.stages.{stage}", "--params", "params.yaml"], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]  # one line, no traceback
    match = WRONG_INTERPRETER.match(lines[0])
    assert match, lines[0]
    assert Path(match["python"]).name.startswith("python") and match["module"]


# --- the README, end to end ---------------------------------------------------------------------------

def shared_venv(clone: Path) -> Path:
    """``clone/.venv``: a venv of the base interpreter that reuses this venv's packages, not its code."""
    venv = clone / ".venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    # the clone's code first (what `pip install -e .` in the clone would give), then the installed packages
    (Path(purelib) / "_clap_shared_env.pth").write_text("\n".join([str(clone), *sorted(ours)]) + "\n")
    main_bin = Path(sys.executable).parent
    for script in sorted(main_bin.iterdir()):
        if script.name.startswith(("python", "pip", "activate", "Activate")) or not script.is_file():
            continue
        text = script.read_bytes()
        if not text.startswith(b"#!") or b"python" not in text.split(b"\n", 1)[0]:
            continue
        target = venv / "bin" / script.name
        target.write_bytes(b"#!" + str(python).encode() + b"\n" + text.split(b"\n", 1)[1])
        target.chmod(0o755)
    (venv / ".installed").touch()  # newer than pyproject.toml: `make setup` has nothing to do
    return venv


def clean_shell_env(home: str) -> dict[str, str]:
    """A new login shell's inputs: no venv, no project variables; the user's git identity only."""
    env = {"HOME": home, "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": os.environ.get("LANG", "C.UTF-8"),
           "TERM": "dumb", "USER": os.environ.get("USER", "user")}
    for name in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        env[name] = os.environ.get(name, "readme test" if name.endswith("NAME") else "readme@example.invalid")
    return env


def split_steps(output: str) -> dict[str, str]:
    steps: dict[str, str] = {}
    name = "(shell start)"
    for line in output.splitlines():
        if line.startswith(STEP_MARK):
            name = line[len(STEP_MARK):]
            steps[name] = ""
        else:
            steps[name] = steps.get(name, "") + line + "\n"
    return steps


@pytest.mark.slow
def test_readme_commands_as_printed_on_a_fresh_clone(tmp_path: Path) -> None:
    source = copy_repo(tmp_path / "origin", tiny_pipeline())
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(source), str(clone)], tmp_path)
    shared_venv(clone)

    # "make test" is this suite: of the quick start, the test runs `make repro`
    steps = [
        ("quick start", readme_line("make repro")),
        # the copy's HEAD carries the main repository's full-size results; the tiny baseline's
        # results stand in for them, as a fresh clone's HEAD carries the committed baseline's
        ("commit baseline (test only)", "git add -A && git commit -q -m 'baseline results'"),
        ("activate", readme_line("source .venv/bin/activate")),
        ("which python", 'echo "python=$(command -v python) dvc=$(command -v dvc)"'),
        ("exp run", readme_line("dvc exp run -S fusion=true")),
        ("metrics diff", readme_line("dvc metrics diff")),
        ("exp show", readme_line("dvc exp show")),
        ("report", readme_line("make report")),
    ]
    script = ["set -eo pipefail", f"cd {shlex.quote(str(clone))}",
              f'echo "{STEP_MARK}path"', 'echo "PATH=$PATH"']
    for name, line in steps:
        script += [f'echo "{STEP_MARK}{name}"', line]
    start = time.monotonic()
    proc = subprocess.run(["bash", "-lc", "\n".join(script)], cwd=tmp_path, env=clean_shell_env(os.environ["HOME"]),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=2400)
    seconds = time.monotonic() - start
    out = split_steps(proc.stdout)
    failed = list(out)[-1]
    assert proc.returncode == 0, f"step '{failed}' failed after {seconds:.0f} s:\n{out[failed][-8000:]}"
    print(f"README commands: {seconds:.0f} s, load average {os.getloadavg()}")

    # the login shell's PATH held no virtual environment before the README's activation line
    shell_path = out["path"].strip().removeprefix("PATH=").split(os.pathsep)
    assert not [d for d in shell_path if d and (Path(d).parent / "pyvenv.cfg").is_file()], shell_path
    assert f"python={clone}/.venv/bin/python dvc={clone}/.venv/bin/dvc" in out["which python"]

    # the experiment ran on the fusion model and its results are in the workspace
    assert yaml.safe_load((clone / "params.yaml").read_text())["fusion"] is True
    baseline = json.loads(run(["git", "show", "HEAD:reports/train/metrics.json"], clone).stdout)
    fusion = json.loads((clone / "reports/train/metrics.json").read_text())
    changed = sorted(k for k, v in fusion.items() if isinstance(v, (int, float)) and baseline.get(k) != v)
    assert "final_loss" in changed, (baseline, fusion)

    # `dvc metrics diff` shows the difference: each changed train metric with both values
    diff_rows = [line.split() for line in out["metrics diff"].splitlines()
                 if line.startswith("reports/train/metrics.json")]
    shown = {row[1]: row[2:] for row in diff_rows}
    assert "final_loss" in shown, out["metrics diff"]
    for name in changed:
        assert name in shown, (name, out["metrics diff"])

    # `dvc exp show` lists the experiment; the report's table puts it beside the baseline
    [experiment] = re.findall(r"Ran experiment\(s\): (\S+)", out["exp run"]) or [None]
    assert experiment and experiment in out["exp show"], out["exp run"][-2000:] + out["exp show"]
    report = (clone / "reports/report.md").read_text()
    table = report[report.index("## Experiments"):]
    assert "fusion=True" in table and "fusion=False" in table, table
