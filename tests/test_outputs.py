"""`--output-files DIR`: written only into a folder champion made, never over a user's files."""

from __future__ import annotations

from pathlib import Path

from champion.files import MARKER


def test_output_files_go_to_a_folder_champion_owns(workdir: Path, cli) -> None:
    out = workdir / "out"
    first = cli("data", "prepare", "--quiet", "--output-files", str(out))
    assert first.exit_code == 0, first.stderr
    assert (out / MARKER).is_file()
    assert (out / "DATA_DIGEST").read_text() == first.values["DATA_DIGEST"]
    again = cli("data", "prepare", "--quiet", "--output-files", str(out))  # its own folder: rewritten in place
    assert again.exit_code == 0, again.stderr


def test_a_rerun_leaves_only_the_keys_it_wrote(workdir: Path, cli) -> None:
    out = workdir / "out"
    assert cli("data", "prepare", "--quiet", "--output-files", str(out)).exit_code == 0
    (out / "RESULT").write_text("passed")  # what an earlier `champion run` that shipped left there
    (out / "GATE2_RESULT").write_text("passed")
    again = cli("data", "prepare", "--quiet", "--output-files", str(out))
    assert again.exit_code == 0, again.stderr
    assert sorted(p.name for p in out.iterdir() if p.name != MARKER) == sorted(again.values)
    failed = cli("promote", "--quiet", "--run-id", "0" * 32, "--output-files", str(out))  # stops before any verdict
    assert failed.exit_code == 1, failed.stderr
    assert [p.name for p in out.iterdir()] == [MARKER]


def test_a_users_folder_is_refused_and_left_as_it_was(workdir: Path, cli) -> None:
    mine = workdir / "mine"
    mine.mkdir()
    (mine / "notes.md").write_text("precious")
    (mine / "DATA_DIGEST").write_text("my own file")
    result = cli("data", "prepare", "--quiet", "--output-files", str(mine))
    assert result.exit_code == 2
    assert "did not create" in result.stderr
    assert (mine / "DATA_DIGEST").read_text() == "my own file"
    assert sorted(p.name for p in mine.iterdir()) == ["DATA_DIGEST", "notes.md"]


def test_an_output_folder_from_before_markers_is_adopted(workdir: Path, cli) -> None:
    old = workdir / "old"
    old.mkdir()
    (old / "RUN_ID").write_text("abc")  # what earlier releases wrote: KEY files only
    result = cli("data", "prepare", "--quiet", "--output-files", str(old))
    assert result.exit_code == 0, result.stderr
    assert (old / MARKER).is_file() and (old / "DATA_DIGEST").is_file()


def test_a_refused_output_folder_costs_no_work(workdir: Path, cli) -> None:
    """Refused before training, not after: no run, no store, and the user's files untouched."""
    proj = workdir / "proj"
    proj.mkdir()
    for name in ("VERSION", "LICENSE", "TRAIN_SIZE"):  # upper-case names, but not all of them champion's
        (proj / name).write_text("mine")
    result = cli("train", "--quiet", "--epochs", "1", "--output-files", str(proj))
    assert result.exit_code == 2 and "did not create" in result.stderr
    assert not (workdir / "mlflow.db").exists() and result.values == {}
    assert all((proj / name).read_text() == "mine" for name in ("VERSION", "LICENSE", "TRAIN_SIZE"))


def test_a_refused_card_folder_costs_no_work(workdir: Path, cli) -> None:
    cards = workdir / "site" / "digits-cnn" / "model_card"
    cards.mkdir(parents=True)
    (cards / "index.html").write_text("mine")
    result = cli("run", "--quiet", "--epochs", "1", "--output-dir", str(workdir / "site"))
    assert result.exit_code == 2 and "did not create" in result.stderr
    assert not (workdir / "mlflow.db").exists()
    assert [p.name for p in cards.iterdir()] == ["index.html"]
