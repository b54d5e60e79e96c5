"""The ``spectriton`` command: one-line errors with exit status 2, a short ``compare`` on the
embedded sample, and resuming an interrupted comparison without losing finished rows."""

import json
import os
import subprocess
import sys

import pytest
import torch

from spectriton import cli, experiment

TINY = ["--limit-train", "128", "--limit-test", "64", "--epochs", "1", "--no-progress"]


def run_cli(capsys, *argv):
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["frobnicate"], "invalid choice"),
        (["compare", "--model", "resnet"], "unknown model 'resnet'"),
        (["compare", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["compare", "--betas", "0.5,abc"], "comma-separated numbers"),
        (["compare", "--betas", ","], "at least one number"),
        (["compare", "--betas", "-0.5"], "betas must be in [0, 3.403e+38]"),
        (["compare", "--betas", "inf"], "betas must be in [0, 3.403e+38]"),
        (["memory", "--beta", "1e300"], "betas must be in [0, 3.403e+38]"),
        (["compare", "--density", "1.5"], "densities must be in (0, 1]"),
        (["compare", "--epochs", "0"], "expected a positive integer"),
        (["compare", "--batch-size", "x"], "expected a positive integer"),
        (["compare", "--lr", "-1"], "expected a positive number"),
        (["compare", "--momentum", "1"], "expected a number in [0, 1)"),
        (["train", "--beta", "-1"], "betas must be in [0, 3.403e+38]"),
        (["train", "--beta", "0.5", "--density", "0.1"], "not allowed with argument"),
        (["memory", "--model", "vgg"], "unknown model 'vgg'"),
        (["memory", "--batch", "-3"], "expected a positive integer"),
        (["train", "--model", "resnet18", "--normalize"], "--normalize is for the zoo's models"),
    ],
)
def test_argument_errors_are_one_line_with_status_2(capsys, argv, expected):
    status, out, err = run_cli(capsys, *argv)
    assert status == cli.EXIT_USAGE
    assert err.startswith("spectriton: error: ") and err.count("\n") == 1, err
    assert expected in err
    assert "Traceback" not in err and out == ""


def test_missing_data_folder_says_what_to_do(capsys, tmp_path):
    status, _, err = run_cli(
        capsys,
        "compare",
        "--dataset",
        "mnist",
        "--data-dir",
        str(tmp_path / "nowhere"),
        "--out",
        str(tmp_path),
    )
    assert status == cli.EXIT_USAGE and err.count("\n") == 1
    assert "--data-dir" in err or "--download" in err


def test_non_writable_output_folder(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    status, _, err = run_cli(capsys, "compare", *TINY, "--out", str(blocker / "out"))
    assert status == cli.EXIT_USAGE and err.count("\n") == 1
    assert "cannot write to --out" in err


def test_no_command_when_options_only(capsys):
    status, _, err = run_cli(capsys, "--no-such-flag")
    assert status == cli.EXIT_USAGE and "spectriton: error:" in err


def test_compare_two_steps_on_the_sample(capsys, tmp_path):
    status, out, err = run_cli(
        capsys, "compare", *TINY, "--betas", "0.7", "--density", "0.2", "--out", str(tmp_path)
    )
    assert status == 0, err
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    forms = ["spatial", "checkpoint", "spec-beta0.7", "spec-density0.2", "spec+checkpoint-density0.2"]
    assert [r["form"] for r in rows] == forms
    spatial = rows[0]
    assert spatial["relative_time"] == 1.0 and all(r["relative_time"] > 0 for r in rows)
    assert rows[1]["checkpoint"] and not rows[1]["spectral"] and rows[4]["checkpoint"] and rows[4]["spectral"]
    assert spatial["relative_memory"] == 1.0 and spatial["train_size"] == 128 and spatial["test_size"] == 64
    for row in rows:
        assert {
            "model",
            "spectral",
            "beta",
            "accuracy",
            "saved_bytes",
            "relative_memory",
            "epoch_time",
            "relative_time",
            "checkpoint",
        } <= set(row)
        assert 0 <= row["accuracy"] <= 100 and row["saved_bytes"] > 0
    assert all(r["relative_memory"] < 1 for r in rows[1:])
    assert rows[3]["min_layer_density"] > 0
    for name in ("results.csv", "figure3.png", "figure4.png", "tradeoff.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "results.csv").read_text().count("\n") == 6
    assert "spec-density0.2" in out and "relative" in out


def test_interrupted_compare_resumes_without_losing_rows(capsys, tmp_path, monkeypatch):
    trained = []
    real_train_run = experiment.train_run

    def interrupt_second_spec(settings, form, data, checkpoint=None):
        if form.name == "spec-density0.2":
            raise KeyboardInterrupt
        trained.append(form.name)
        return real_train_run(settings, form, data, checkpoint)

    monkeypatch.setattr(experiment, "train_run", interrupt_second_spec)
    argv = ["compare", *TINY, "--betas", "0.7", "--density", "0.2", "--no-checkpoint", "--out", str(tmp_path)]
    status, _, err = run_cli(capsys, *argv)
    assert status == 130 and "--resume" in err
    finished = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["form"] for r in finished] == ["spatial", "spec-beta0.7"]

    monkeypatch.setattr(experiment, "train_run", real_train_run)
    trained.clear()
    status, _, err = run_cli(capsys, *argv, "--resume")
    assert status == 0, err
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["form"] for r in rows] == ["spatial", "spec-beta0.7", "spec-density0.2"]
    assert rows[:2] == finished


def test_train_resumes_from_its_checkpoint(capsys, tmp_path):
    common = ["train", "--spectral", "--beta", "0.7", "--limit-train", "128", "--limit-test", "64"]
    common += ["--no-progress", "--out", str(tmp_path)]
    assert run_cli(capsys, *common, "--epochs", "1")[0] == 0
    first = json.loads((tmp_path / "spec-beta0.7.json").read_text())["history"]
    status, out, err = run_cli(capsys, *common, "--epochs", "2", "--resume")
    assert status == 0, err
    history = json.loads((tmp_path / "spec-beta0.7.json").read_text())["history"]
    assert len(history) == 2 and history[0] == first[0]
    assert "accuracy" in out


def test_train_runs_a_converted_torchvision_model(capsys, tmp_path):
    pytest.importorskip("torchvision")
    argv = ["train", "--model", "resnet18", "--spectral", "--beta", "0.3", "--value-dtype", "float8_e4m3fn"]
    argv += [
        "--limit-train",
        "64",
        "--limit-test",
        "32",
        "--epochs",
        "1",
        "--no-progress",
        "--out",
        str(tmp_path),
    ]
    status, out, err = run_cli(capsys, *argv)
    assert status == 0, err
    assert len(json.loads((tmp_path / "spec-beta0.3.json").read_text())["history"]) == 1


def test_train_normalises_a_zoo_model_at_beta_0_3_and_resumes_runs_from_before_the_option(capsys, tmp_path):
    common = ["train", "--model", "alexnet", "--spectral", "--limit-train", "64", "--limit-test", "32"]
    common += ["--no-progress", "--out", str(tmp_path)]
    assert run_cli(capsys, *common, "--normalize", "--epochs", "1")[0] == 0
    saved = torch.load(tmp_path / "spec-beta0.3.pt", weights_only=False)
    assert saved["settings"]["normalize"] is True
    assert json.loads((tmp_path / "spec-beta0.3.json").read_text())["normalize"] is True
    assert any(key.endswith("norm.weight") for key in saved["model"])  # the BN stage's layers
    assert run_cli(capsys, *common, "--epochs", "1")[0] == 0  # plain: spec-beta0.7
    older = torch.load(tmp_path / "spec-beta0.7.pt", weights_only=False)
    del older["settings"]["normalize"]  # as a run saved before the option existed
    torch.save(older, tmp_path / "spec-beta0.7.pt")
    status, _, err = run_cli(capsys, *common, "--epochs", "2", "--resume")
    assert status == 0, err
    status, _, err = run_cli(capsys, *common, "--epochs", "3", "--resume", "--normalize", "--beta", "0.7")
    assert status == cli.EXIT_USAGE and "cannot resume" in err  # a normalised model is another model


def test_resume_refuses_other_settings_and_damaged_files(capsys, tmp_path):
    argv = ["compare", *TINY, "--betas", "0.7", "--out", str(tmp_path)]
    assert run_cli(capsys, *argv)[0] == 0
    status, out, err = run_cli(capsys, *argv, "--lr", "0.5", "--resume")
    assert status == cli.EXIT_USAGE and "other settings (lr 0.02 -> 0.5)" in err and "Traceback" not in err
    (tmp_path / "results.json").write_text("{not json")
    status, _, err = run_cli(capsys, *argv, "--resume")
    assert status == cli.EXIT_USAGE and "not a results file" in err and err.count("\n") == 1


def test_train_refuses_a_damaged_or_foreign_checkpoint(capsys, tmp_path):
    common = ["train", "--spectral", "--limit-train", "128", "--limit-test", "64", "--epochs", "1"]
    common += ["--no-progress", "--out", str(tmp_path), "--resume"]
    (tmp_path / "spec-beta0.7.pt").write_bytes(b"not a checkpoint")
    status, _, err = run_cli(capsys, *common)
    assert status == cli.EXIT_USAGE and "cannot resume from" in err and "delete it" in err
    assert run_cli(capsys, *common, "--model", "alexnet", "--beta", "0.5")[0] == 0  # spec-beta0.5.pt
    (tmp_path / "spec-beta0.5.pt").rename(tmp_path / "spec-beta0.7.pt")  # another model's
    status, _, err = run_cli(capsys, *common)
    assert status == cli.EXIT_USAGE and "cannot resume from" in err and "Traceback" not in err


@pytest.mark.parametrize("device", ["bogus", "cuda:7"])
def test_unusable_devices_are_usage_errors(capsys, device):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    status, out, err = run_cli(capsys, "train", "--device", device, "--no-progress")
    assert status == cli.EXIT_USAGE and "device" in err and err.count("\n") == 1 and out == ""


def test_memory_prints_both_forms(capsys):
    status, out, _ = run_cli(capsys, "memory", "--model", "lenet5", "--batch", "2")
    assert status == 0
    assert "lenet5 spatial, batch 2" in out and "lenet5 spec, batch 2" in out
    assert "features.0.0" in out and "relative" in out


def test_memory_all_summarises_every_model(capsys):
    status, out, _ = run_cli(capsys, "memory", "--model", "all", "--batch", "2")
    assert status == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert list(rows) == ["lenet5", "alexnet", "vgg16", "densenet"]
    assert float(rows["densenet"][-1]) < 0.5  # the Spec DenseNet keeps far less


def test_python_dash_m_runs_the_same_command():
    result = subprocess.run(
        [sys.executable, "-m", "spectriton", "memory", "--model", "nope"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("spectriton: error: argument --model: unknown model 'nope'")
