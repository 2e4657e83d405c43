"""The tutorial walkthrough in ``examples/``, run on the session's cluster."""

from pathlib import Path

from .conftest import run_python

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tutorial_walkthrough.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_the_walkthrough_runs_every_step(cluster, client, tmp_path):
    completed = run_python(
        str(EXAMPLE),
        "--quick",
        "--client",
        cluster.profile_dir,
        "--output-dir",
        str(tmp_path),
        "--poll",
        "0.5",
        "--budget",
        "2",
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    steps = [line.split(" ", 1)[0] for line in lines if line[:1].isdigit()]
    assert steps == ["1.", "2-3.", "4.", "5.", "6."]
    # The grid search's report is complete; the randomized search's report
    # says how far it got (done within its budget, or aborted).
    progress = [line for line in lines if line.startswith("Progress: ")]
    assert len(progress) == 2
    assert progress[0] == "Progress: 100% (18/18)"
    assert progress[1].endswith(("(24/24)", ", aborted"))
    assert sum(line.startswith("Rank 1: validation: ") for line in lines) == 2
    assert any(line.startswith("  best: {'C': ") for line in lines)
    # Before and after: every engine's memory and the host's free memory.
    assert sum(line.startswith("  engines: ") for line in lines) == 2
    for name in ("boxplots.png", "heatmap.png", "learning_curve.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG_SIGNATURE)
