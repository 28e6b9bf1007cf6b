"""The command line and the README stay in step with the presets."""

from pathlib import Path

import pytest

from lstmkit.cells import PRESETS
from lstmkit.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def test_variants_lists_every_preset(capsys):
    assert main(["variants"]) == 0
    out = capsys.readouterr().out
    for name in PRESETS:
        assert name in out


def test_readme_documents_every_preset():
    text = README.read_text()
    for name in PRESETS:
        assert f"`{name}`" in text, name


def test_unknown_command_exits_2(capsys):
    with pytest.raises(SystemExit) as err:
        main(["frobnicate"])
    assert err.value.code == 2
