"""`compress --help` shows the sub-commands and the options of the plain `compress MODEL ...` form."""
from tests.conftest import run_cli


def test_help_shows_commands_and_run_options():
    res = run_cli("--help")
    assert res.code == 0, res
    for word in ("stages", "inspect", "diff", "--pipeline", "--data", "--train-data", "--out", "--max-drop", "--set"):
        assert word in res.stdout, word


def test_python_dash_m_compressor_runs_the_command():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "compressor", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("compressor "), proc


def test_run_help_shows_the_defaults_resolved_after_the_recipe(monkeypatch):
    """--seed, --device, --max-drop, --confidence and --threads default to None (a recipe may set them), so their help
    states the default; rich must print the brackets, not read them as markup."""
    from tests.conftest import run_cli

    monkeypatch.setenv("COLUMNS", "250")
    res = run_cli("run", "--help")
    assert res.code == 0
    for default in ("[default: 0]", "[default: cpu]", "[default: 1.0]", "[default: 0.75]", "[default: 1]"):
        assert default in res.stdout, default
