"""The README's two commands: CI runs the test command verbatim, the first one runs the demo."""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def readme_commands() -> list[str]:
    with open(os.path.join(REPO, 'README.md'), encoding='utf-8') as f:
        text = f.read()
    blocks = re.findall(r'```(?:bash|sh)?\n(.*?)```', text, flags=re.S)
    return [line for block in blocks[:2] for line in block.splitlines() if line and not line.startswith('#')]

def test_ci_runs_the_readme_test_command():
    commands = readme_commands()
    assert len(commands) >= 2
    with open(os.path.join(REPO, '.ci', 'run'), encoding='utf-8') as f:
        ci = f.read()
    assert commands[1] in ci.splitlines()

def test_first_command_runs_the_demo():
    first = readme_commands()[0]
    assert 'pip install -r requirements.txt' in first and 'sfbd.demo' in first
