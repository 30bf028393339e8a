"""The README's walkthrough, command by command, as a user would type it."""

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stemae.cli import app
from stemae.data import read_results

README = Path(__file__).resolve().parents[1] / "README.md"


def walkthrough() -> list[tuple[list[str], bool]]:
    """The commands between the walkthrough markers: (arguments after
    ``stemae``, whether the README says the command is refused)."""
    block = re.search(r"<!-- walkthrough -->\s*```bash\n(.*?)```", README.read_text(), re.S).group(1)
    out = []
    for line in block.splitlines():
        command, _, comment = line.partition("#")
        if command.strip():
            args = shlex.split(command)
            assert args[0] == "stemae"
            out.append((args[1:], comment.strip().startswith("refused")))
    return out


def test_readme_walkthrough(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    steps = walkthrough()
    assert len(steps) >= 6
    for args, refused in steps:
        r = runner.invoke(app, args + (["--no-progress"] if args[0] == "strain" else []))
        assert r.exit_code == (2 if refused else 0), (args, r.output)
        assert "Traceback" not in r.output
    arrays, attrs = read_results(tmp_path / "maps" / "strain.zarr")
    assert attrs["reference_lattice"]["a_A"] == pytest.approx(3.153, rel=3e-3)
    assert attrs["calibration"]["r_pixel_size"] == 0.5 and arrays["valid"].all()
    for name in ("maps/strain_maps.png", "maps/diagnostics.png", "maps/pattern_12_14.png", "maps/strain.hspy",
                 "turned/strain_maps.png"):
        assert (tmp_path / name).exists(), name
