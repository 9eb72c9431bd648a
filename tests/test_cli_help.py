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
