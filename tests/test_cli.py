from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_shapes3d
from dydis import __version__
from dydis.cli.main import app, main

runner = CliRunner()
STAGES = ["prepare-data", "train-vqgan", "train-ldm", "eval-metrics", "downstream-gbt"]


def test_help_lists_every_stage():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in [*STAGES, "download", "run", "artifacts", "visualize", "report"]:
        assert command in result.output


COMMANDS = [*STAGES, "download", "visualize", "report", "run", "artifacts list", "artifacts show"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_names_values_in_words_not_python_types(command):
    result = runner.invoke(app, [*command.split(), "--help"])
    assert result.exit_code == 0
    for python_type in ("<list[", "<Path>", "<path>", "<str>", "<int>", "<float>"):
        assert python_type not in result.output, (command, python_type)


def test_help_shows_choices_from_the_config_and_each_commands_seed_default():
    ldm = runner.invoke(app, ["train-ldm", "--help"]).output
    for line in ("--preset [paper|small|tiny]", "--dyga-mode [paper|official]", "--quantizer [dyga|fsq|none]"):
        assert line in ldm
    assert "Random seed [default: 42]" in ldm
    metrics = runner.invoke(app, ["eval-metrics", "--help"]).output
    assert "--reduce [pca|scalar|none]" in metrics and "Random seed [default: 0]" in metrics


def test_shell_completion_is_on_and_completes_choices(monkeypatch, capsys):
    assert "--install-completion" in runner.invoke(app, ["--help"]).output
    monkeypatch.setenv("_DYDIS_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "dydis train-ldm --preset ")
    monkeypatch.setenv("COMP_CWORD", "3")
    code, out, _ = run_main(monkeypatch, capsys)
    assert code == 0 and out.split() == ["paper", "small", "tiny"]


def test_run_names_a_missing_workflow_file(tmp_path):
    missing = tmp_path / "workflow.yaml"
    result = runner.invoke(app, ["run", str(missing), "--root", str(tmp_path / "store")])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.strip() == f"error: {missing}: config file not found"


def test_config_file_and_set_overrides(tmp_path):
    source = write_shapes3d(tmp_path / "3dshapes.h5", np.arange(0, 480_000, 10_000))
    config = tmp_path / "prep.yaml"
    config.write_text(f"dataset: shapes3d\nsource: {source}\nsubset: 10\n")
    root = tmp_path / "store"
    result = runner.invoke(app, ["prepare-data", "--config", str(config), "--set", "subset=7", "--root", str(root)])
    assert result.exit_code == 0, result.output
    listing = runner.invoke(app, ["artifacts", "list", "--root", str(root), "--json"])
    (entry,) = json.loads(listing.stdout)
    assert entry["ref"] == "prepare-data/shapes3d@v1" and entry["results"]["n_images"] == 7
    table = runner.invoke(app, ["artifacts", "list", "--root", str(root)])
    assert table.exit_code == 0 and table.stdout == ""
    assert "prepare-data/shapes3d@v1" in table.stderr and "7 images" in table.stderr


def test_bad_override_names_the_key(tmp_path):
    result = runner.invoke(app, ["prepare-data", "--set", "subsett=3", "--root", str(tmp_path)])
    assert result.exit_code == 2 and "subsett" in result.stderr
    result = runner.invoke(app, ["prepare-data", "--set", "fraction=lots", "--root", str(tmp_path)])
    assert result.exit_code == 2 and "fraction" in result.stderr


def test_artifacts_show_prints_path_and_lineage(tmp_path):
    source = write_shapes3d(tmp_path / "3dshapes.h5", np.arange(0, 480_000, 50_000))
    root = tmp_path / "store"
    made = runner.invoke(app, ["prepare-data", "--dataset", "shapes3d", "--source", str(source), "--root", str(root)])
    shown = runner.invoke(app, ["artifacts", "show", "prepare-data/shapes3d@v1", "--root", str(root)])
    assert shown.exit_code == 0
    assert shown.stdout.strip() == made.stdout.strip()
    assert "kind: dataset" in shown.stderr and "files verified" in shown.stderr
    missing = runner.invoke(app, ["artifacts", "show", "prepare-data/nothing", "--root", str(root)])
    assert missing.exit_code == 2 and missing.stderr.startswith("error: prepare-data/nothing")


def test_internal_failure_exits_1_without_traceback(monkeypatch, tmp_path):
    from dydis.stages import prepare_data

    def boom(*args, **kwargs):
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(prepare_data, "run", boom)
    result = runner.invoke(app, ["prepare-data", "--root", str(tmp_path)])
    assert result.exit_code == 1 and "internal failure: ZeroDivisionError" in result.stderr
    assert "Traceback" not in result.stderr
    result = runner.invoke(app, ["prepare-data", "--root", str(tmp_path), "--debug"])
    assert result.exit_code == 1 and "Traceback" in result.stderr


@pytest.mark.parametrize("error, code, line", [
    ("ConfigError", 2, "error: pip install -e '.[tensorboard]', or [bold]not bold[/bold]"),
    ("ValueError", 1, "error: internal failure: ValueError: pip install -e '.[tensorboard]', or [bold]not bold[/bold] "
                      "(run with --debug for the traceback)"),
])
def test_error_messages_are_text_not_markup(monkeypatch, tmp_path, error, code, line):
    """Square brackets in a message (an extra's name, a choice list) are printed as written."""
    from dydis import errors
    from dydis.stages import prepare_data

    def fails(*args, **kwargs):
        raise getattr(errors, error, ValueError)("pip install -e '.[tensorboard]', or [bold]not bold[/bold]")

    monkeypatch.setattr(prepare_data, "run", fails)
    result = runner.invoke(app, ["prepare-data", "--root", str(tmp_path)])
    assert result.exit_code == code and " ".join(result.stderr.split()) == line


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """The console script's entry point on ``dydis ARGS``: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["dydis", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    out, err = capsys.readouterr()
    return exited.value.code, out, err


@pytest.mark.parametrize("args, start, end", [
    (["train-ldm", "--foo"], "error: no such option: --foo", " (see 'dydis train-ldm --help')"),
    (["artifacts", "show"], "error: missing argument 'ref'", " (see 'dydis artifacts show --help')"),
    (["nosuch"], "error: no such command 'nosuch'", " (see 'dydis --help')"),
    (["eval-metrics", "--data"], "error: option '--data' requires an argument", " (see 'dydis --help')"),
    (["prepare-data", "--seed", "abc"], "error: invalid value for '--seed': ", " (see 'dydis prepare-data --help')"),
    (["train-ldm", "--preset", "huge"], "error: invalid value for '--preset': ", " (see 'dydis train-ldm --help')"),
    (["prepare-data", "--dataset", "shapes4d"], "error: invalid value for '--dataset': ",
     " (see 'dydis prepare-data --help')"),
    (["visualize", "morph"], "error: invalid value for 'WHAT': ", " (see 'dydis visualize --help')"),
    (["eval-metrics", "--reduce", "mean"], "error: invalid value for '--reduce': ", " (see 'dydis eval-metrics --help')"),
])
def test_usage_errors_are_one_line_and_exit_2(monkeypatch, capsys, args, start, end):
    code, out, err = run_main(monkeypatch, capsys, *args)
    assert code == 2 and out == ""
    assert err.startswith(start) and err.endswith(end + "\n") and err.count("\n") == 1, err


def test_the_entry_point_keeps_every_other_exit_code(monkeypatch, capsys, tmp_path):
    assert run_main(monkeypatch, capsys, "--version") == (0, f"{__version__}\n", "")
    code, out, err = run_main(monkeypatch, capsys, "artifacts", "show", "prepare-data/nothing", "--root", str(tmp_path))
    assert code == 2 and out == "" and err.startswith("error: prepare-data/nothing: no artifact")
    code, _, err = run_main(monkeypatch, capsys)  # no command: the help text, as before
    assert code == 2 and "Commands:" in err and "prepare-data" in err
