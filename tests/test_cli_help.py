"""`compress --help` shows the sub-commands and the options of the plain `compress MODEL ...` form."""
from tests.conftest import run_cli


def test_help_shows_commands_and_run_options():
    res = run_cli("--help")
    assert res.code == 0, res
    for word in ("stages", "inspect", "diff", "--pipeline", "--data", "--train-data", "--out", "--max-drop", "--set"):
        assert word in res.stdout, word


def test_flags_show_no_value_type():
    """A flag takes no value: --force, --quiet, --help and the like show no `<bool>` metavar in any command's help."""
    for command in ([], ["run"], ["stages"], ["inspect"], ["diff"]):
        res = run_cli(*command, "--help")
        assert res.code == 0 and "--help" in res.stdout, res
        assert "<bool>" not in res.stdout and "BOOLEAN" not in res.stdout, command


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


def test_help_version_and_diff_start_without_torch(tmp_path):
    """The command line imports a command's implementation when it runs: `--help`, `--version` and `diff` never
    load torch or ONNX Runtime (which take seconds to import on a loaded machine)."""
    import json
    import subprocess
    import sys

    report = {"baseline": {"metric": "accuracy", "value": 90.0}, "artifacts": [],
              "gate": {"drop": 0.0, "final": 90.0, "passed": True}, "model": {"sha256": "a" * 64}}
    for name in ("a.json", "b.json"):
        (tmp_path / name).write_text(json.dumps(report))
    probe = ("import sys\nfrom compressor.cli import entrypoint\nsys.argv = ['compress', *sys.argv[1:]]\n"
             "try:\n    entrypoint()\nexcept SystemExit as e:\n    code = e.code\n"
             "print('LOADED', sorted(m for m in ('torch', 'onnxruntime', 'onnx') if m in sys.modules), code)")
    for args in (["--help"], ["--version"], ["diff", str(tmp_path / "a.json"), str(tmp_path / "b.json")]):
        proc = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120)
        last = proc.stdout.strip().splitlines()[-1]
        assert last.startswith("LOADED [] ") and last.endswith((" 0", " None")), (args, proc.stdout[-500:], proc.stderr)


def test_verbose_prints_every_note_of_each_stage(tmp_path):
    from tests.conftest import HELDOUT, SAMPLES, TRAIN, read_report

    args = (SAMPLES / "digits_mlp.pt2", "--pipeline", "prune", "--data", HELDOUT, "--train-data", TRAIN,
            "--set", "prune.schedule=0.3", "--set", "prune.epochs_per_step=0", "--set", "prune.codebook=off")
    quiet_notes = run_cli(*args, "--out", tmp_path / "a")
    verbose = run_cli(*args, "--out", tmp_path / "b", "-v")
    assert quiet_notes.code == verbose.code == 0, verbose
    notes = read_report(tmp_path / "b")["stages"][0]["notes"]
    stop_rule = next(n for n in notes if n.startswith("stop rule:"))
    assert " ".join(stop_rule.split()[:8]) in " ".join(verbose.stdout.split())
    assert " ".join(stop_rule.split()[:8]) not in " ".join(quiet_notes.stdout.split())
