"""The `pneuradnet` command, run as a user runs it: a separate process, real model, real radiographs."""

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pneuradnet.cli import main
from pneuradnet.cli.local import format_evaluation
from pneuradnet.evaluation import evaluate
from pneuradnet.manifest import load_manifest, resolve_model_file

NORMAL, PNEUMONIA, UNSURE = "NORMAL2-IM-1430-0001", "person1952_bacteria_4883", "person1954_bacteria_4886"
TENSORFLOW_NOISE = "This TensorFlow binary is optimized"
"""A WARNING TensorFlow prints at start-up unless TF_CPP_MIN_LOG_LEVEL hides it."""


def run_cli(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-m", "pneuradnet.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


@pytest.fixture
def image_folder(tmp_path, radiograph):
    """Three real radiographs (links) and a text file named like an image."""
    folder = tmp_path / "images"
    folder.mkdir()
    for stem in (NORMAL, PNEUMONIA, UNSURE):
        (folder / f"{stem}.jpeg").symlink_to(radiograph(stem))
    (folder / "broken.png").write_text("not a radiograph")
    (folder / "notes.txt").write_text("ignored: not named like an image")
    return folder


# --- predict ---------------------------------------------------------------------------------------------------


@pytest.mark.model
def test_predict_prints_a_json_line_per_image_and_reports_the_bad_one(image_folder, tmp_path):
    result = run_cli("predict", image_folder, "--batch-size", "2", cwd=tmp_path)  # 4 files: 2 chunks

    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [os.path.basename(r["filename"]) for r in records] == [
        f"{NORMAL}.jpeg", "broken.png", f"{PNEUMONIA}.jpeg", f"{UNSURE}.jpeg"]  # sorted, bad one in its place
    assert records[1] == {"filename": str(image_folder / "broken.png"),
                          "error": "not an image: send PNG, JPEG or DICOM"}
    assert records[0]["predicted_class"] == "NORMAL"
    assert records[2]["predicted_class"] == "PNEUMONIA"
    for record in (records[0], records[2], records[3]):
        assert record["labels"] == ["NORMAL", "PNEUMONIA"]
        assert sum(record["predictions"]) == pytest.approx(1.0)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert TENSORFLOW_NOISE not in result.stderr


@pytest.mark.model
def test_predict_csv_has_a_column_per_label_and_an_error_column(image_folder, tmp_path):
    result = run_cli("predict", "--csv", image_folder / f"{PNEUMONIA}.jpeg", image_folder / "broken.png",
                     cwd=tmp_path)

    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["filename", "predicted_class", "confidence", "NORMAL", "PNEUMONIA", "error"]
    assert len(rows) == 3
    good, bad = (dict(zip(rows[0], row, strict=True)) for row in rows[1:])
    assert good["predicted_class"] == "PNEUMONIA"
    assert float(good["NORMAL"]) + float(good["PNEUMONIA"]) == pytest.approx(1.0)
    assert float(good["confidence"]) == float(good["PNEUMONIA"])
    assert good["error"] == ""
    assert bad["filename"].endswith("broken.png")
    assert bad["predicted_class"] == ""
    assert bad["error"] == "not an image: send PNG, JPEG or DICOM"
    assert result.returncode == 1


@pytest.mark.model
def test_predict_csv_writes_file_names_that_look_like_formulas_as_text(tmp_path, radiograph):
    hyperlink, total = '=HYPERLINK("http://example.invalid","x").jpeg', "+SUM(1+1).jpeg"
    (tmp_path / hyperlink).parent.mkdir(parents=True)  # its slashes make folders: `=HYPERLINK("http:` and all
    (tmp_path / hyperlink).symlink_to(radiograph(PNEUMONIA))
    (tmp_path / total).write_text("not a radiograph")

    result = run_cli("predict", "--csv", hyperlink, total, cwd=tmp_path)  # relative paths start the cells

    good, bad = csv.DictReader(io.StringIO(result.stdout))
    assert (good["filename"], bad["filename"]) == ("'" + str(Path(hyperlink)), "'" + total)
    assert good["filename"].startswith("'=HYPERLINK(")
    assert good["predicted_class"] == "PNEUMONIA"
    assert float(good["NORMAL"]) + float(good["PNEUMONIA"]) == pytest.approx(1.0)  # numbers stay numbers
    assert bad["error"] == "not an image: send PNG, JPEG or DICOM"


def test_predict_with_no_images_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")

    result = run_cli("predict", tmp_path, cwd=tmp_path)

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == f"pneuradnet: error: no .png/.jpg/.jpeg/.dcm/.dicom files in {tmp_path}"


def test_library_errors_are_one_line_with_exit_status_2(tmp_path, radiograph):
    result = run_cli("predict", "--manifest", "no-such-model", radiograph(NORMAL), cwd=tmp_path)

    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("pneuradnet: error: no model manifest 'no-such-model'; shipped manifests: default")


def test_a_missing_model_file_is_one_line_with_exit_status_2(tmp_path, radiograph):
    result = run_cli("info", "--model-path", tmp_path / "missing.keras", cwd=tmp_path)

    assert result.returncode == 2
    assert result.stderr.strip() == f"pneuradnet: error: model file {tmp_path / 'missing.keras'} " \
                                    "for 'xception-pneumonia' does not exist"


def test_the_console_script_is_installed():
    script = Path(sys.executable).with_name("pneuradnet")

    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)

    assert (result.returncode, result.stdout.strip()) == (0, "pneuradnet 0.1.0")


def test_batch_size_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--batch-size", "0", "x.png"])

    assert exit_.value.code == 2
    assert "--batch-size: must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["predict", "evaluate", "info"])
def test_every_command_takes_the_common_options(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])

    assert exit_.value.code == 0
    usage = capsys.readouterr().out
    assert all(option in usage for option in ("--manifest", "--model-path", "--batch-size"))


# --- evaluate --------------------------------------------------------------------------------------------------


@pytest.fixture
def labelled_folder(tmp_path, radiographs):
    """The 16 radiographs laid out as normal/ (lower case, to check matching ignores case) and PNEUMONIA/."""
    folder = tmp_path / "labelled"
    for path in radiographs:
        subfolder = folder / ("normal" if path.name.startswith("NORMAL") else "PNEUMONIA")
        subfolder.mkdir(parents=True, exist_ok=True)
        (subfolder / path.name).symlink_to(path)
    return folder


@pytest.mark.model
def test_evaluate_scores_the_real_radiographs(labelled_folder, tmp_path):
    result = run_cli("evaluate", labelled_folder, "--json", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert scores["labels"] == ["NORMAL", "PNEUMONIA"]
    assert scores["accuracy"] >= 0.75  # the model gets 13 of 16
    assert sum(map(sum, scores["confusion"])) == 16
    assert [c["support"] for c in scores["classes"]] == [8, 8]
    assert scores["failed"] == []


def test_evaluate_names_the_labels_when_a_subfolder_is_not_one(labelled_folder, tmp_path):
    (labelled_folder / "covid").mkdir()

    result = run_cli("evaluate", labelled_folder, cwd=tmp_path)

    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "covid" in line
    assert "NORMAL, PNEUMONIA" in line


def labels_file(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="") as stream:
        csv.writer(stream).writerows([("file", "label"), *rows])
    return path


@pytest.mark.model
def test_evaluate_scores_the_shipped_flat_validation_folder_with_a_labels_file(radiographs, tmp_path):
    folder = radiographs[0].parent  # as the model package ships it: flat, the label in each file's name
    labels = labels_file(tmp_path / "labels.csv", [
        (path.name, "NORMAL" if path.name.startswith("NORMAL") else "pneumonia") for path in radiographs])

    result = run_cli("evaluate", folder, "--labels", labels, "--json", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert (scores["correct"], scores["total"]) == (13, 16)  # as the README says
    assert [c["support"] for c in scores["classes"]] == [8, 8]
    assert sum(map(sum, scores["confusion"])) == 16


def test_a_labels_file_naming_a_missing_image_or_an_unknown_label_is_refused_line_by_line(radiographs, tmp_path):
    folder = radiographs[0].parent
    labels = labels_file(tmp_path / "labels.csv", [(radiographs[0].name, "NORMAL"), ("gone.jpeg", "NORMAL"),
                                                   (radiographs[-1].name, "COVID")])

    result = run_cli("evaluate", folder, "--labels", labels, cwd=tmp_path)

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"pneuradnet: error: labels file {labels}: line 3: no file 'gone.jpeg' in {folder}; "
        "line 4: 'COVID' is not a label of model 'xception-pneumonia' (NORMAL, PNEUMONIA)"]


def test_a_labels_file_without_its_header_is_refused(radiographs, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text(f"{radiographs[0].name},NORMAL\n")

    result = run_cli("evaluate", radiographs[0].parent, "--labels", labels, cwd=tmp_path)

    assert result.returncode == 2
    assert result.stderr.strip() == (f"pneuradnet: error: labels file {labels} must start with the header file,label, "
                                     f"not {radiographs[0].name},NORMAL")


def test_evaluate_on_a_flat_folder_without_a_labels_file_says_to_give_one(radiographs, tmp_path):
    result = run_cli("evaluate", radiographs[0].parent, cwd=tmp_path)

    assert result.returncode == 2
    assert "give a labels file with --labels" in result.stderr


def test_evaluation_table_is_readable():
    scores = evaluate(["NORMAL"] * 8 + ["PNEUMONIA"] * 8,
                      ["NORMAL"] * 7 + ["PNEUMONIA"] + ["NORMAL"] * 2 + ["PNEUMONIA"] * 6, ["NORMAL", "PNEUMONIA"])

    assert format_evaluation(scores, failed=1).splitlines() == [
        "accuracy: 0.8125 (13 of 16 images; 1 could not be classified)",
        "",
        "label      precision  recall      f1  support",
        "NORMAL        0.7778  0.8750  0.8235        8",
        "PNEUMONIA     0.8571  0.7500  0.8000        8",
        "",
        "confusion matrix (rows: true label, columns: predicted label)",
        "           NORMAL  PNEUMONIA",
        "NORMAL          7          1",
        "PNEUMONIA       2          6",
    ]


# --- info ------------------------------------------------------------------------------------------------------


@pytest.mark.model
def test_info_shows_the_model_file_and_its_sha256_and_passes_the_self_check(tmp_path):
    model_file = resolve_model_file(load_manifest("default"))

    result = run_cli("info", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    fields = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert {key.strip() for key in fields} >= {"name", "version", "labels", "input", "resize", "scaling", "output",
                                               "license", "model file", "sha256", "self-check"}
    assert fields["model file"].strip() == str(model_file)
    assert fields["sha256"].strip() == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert fields["labels"].strip() == "NORMAL, PNEUMONIA"
    assert fields["self-check"].strip().startswith("ok, probabilities sum to 1.000000 in ")
