"""README stays true: its test command is what CI runs, its Python examples run."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def test_ci_runs_the_readme_test_command():
    test_command = next(b for b in _bash_blocks() if "pytest" in b and "pip install" in b).strip()
    ci_lines = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "set ", "cd "))
    ]
    assert " && ".join(ci_lines) == test_command


def test_main_command_installs_then_runs_compare():
    main = next(b for b in _bash_blocks() if b.strip().endswith("spectriton compare")).strip()
    assert "pip install -e ." in main and main.startswith("python3 -m venv .venv")


def test_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
