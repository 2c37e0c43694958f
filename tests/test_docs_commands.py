"""Every ``proca`` command shown in README.md and docs/quickstart.md runs (with tiny settings appended).

The commands are read from the fenced ``bash`` blocks of the two pages (continuation lines joined,
comments dropped) and run in the folder the help-examples test lays out (``tests/test_cli_examples.py``):
tiny synthetic datasets, random-init checkpoints at the paths the pages use, a released-layout ``.pth``
and ``photos/``. As there, ``train`` commands without ``--stage`` (GPUs, ImageNet files) only resolve their
config (``--print-config``) and the demo is replaced by a stub. A false command in either page fails here.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli_examples import _tiny, workdir  # noqa: F401 - the fixture is used by name

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", REPO / "docs" / "quickstart.md"]


def _commands(page: Path) -> list[str]:
    out = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split(" #", 1)[0].strip()
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("proca "):
                    out.append(part)
    return out


COMMANDS = [(page.name, cmd) for page in PAGES for cmd in _commands(page)]


def test_the_pages_show_commands() -> None:
    assert len([c for p, c in COMMANDS if p == "README.md"]) >= 6
    assert len([c for p, c in COMMANDS if p == "quickstart.md"]) >= 5


@pytest.mark.slow
@pytest.mark.parametrize(("page", "command"), COMMANDS, ids=[f"{p}:{c}"[:80] for p, c in COMMANDS])
def test_command_runs(page: str, command: str, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from tests.reliability.conftest import invoke, output_of

    monkeypatch.chdir(workdir)
    for name in ("gta2city",):  # the quickstart's run folder
        if not (workdir / "runs" / name).is_dir():
            shutil.copytree(workdir / "runs" / "x", workdir / "runs" / name)
    args = shlex.split(command)[1:]
    sub = args[0] if args else ""
    calls: list[dict[str, Any]] = []
    if sub == "demo":  # the demo itself takes minutes (tests/engine/test_demo.py runs it)
        import proca.engine.demo

        monkeypatch.setattr(proca.engine.demo, "run_demo", lambda **kw: calls.append(kw))
    for flag in ("--out", "--json"):  # each command writes somewhere new
        if flag in args and sub != "train":
            i = args.index(flag) + 1
            args[i] = str(Path("out") / re.sub(r"\W", "_", command)[:60] / args[i])
    if sub == "convert":
        args[2] = str(Path("out") / args[2])
        Path("out").mkdir(exist_ok=True)
    if sub == "label-info" and "--out" not in args:  # both pages write ROOT/gtav_label_info.json in one folder
        args.append("--force")
    result = invoke(_tiny(sub, args) if sub else ["--help"])
    text = output_of(result)
    assert result.exit_code == 0, f"{page}: {command}\n{text}\n{result.exception!r}"
