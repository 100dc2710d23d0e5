"""The command line: instant help, one-line errors with exit code 2, nothing written on a mistake."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from vggfeat_cli.main import cli

from conftest import REPO, run_cli

HEAVY = ("tensorflow", "keras", "jax", "h5py", "sklearn", "ray")


def _imports_after(code):
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, cwd=REPO, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["extract", "--help"], ["info", "--help"],
                                  ["info", "--arch", "vgg19"], ["info", "--arch", "vgg16", "--json"]])
def test_help_version_and_info_do_not_import_tensorflow(argv):
    code = ("import sys\nfrom vggfeat_cli.main import cli\n"
            f"try:\n    cli({argv!r}, standalone_mode=False)\nexcept SystemExit:\n    pass")
    loaded = _imports_after(code)
    for heavy in ("tensorflow", "keras", "jax", "ray"):
        assert heavy not in loaded, f"{argv} imported {heavy}"


def test_import_vggfeat_is_light():
    loaded = _imports_after("import vggfeat")
    assert not [m for m in HEAVY if m in loaded]


def test_every_command_has_help():
    runner = CliRunner()
    for name, command in cli.commands.items():
        assert command.help, name
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output


def test_version():
    from vggfeat import __version__

    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_info_table_and_json():
    runner = CliRunner()
    result = runner.invoke(cli, ["info", "--arch", "D"])
    assert result.exit_code == 0
    assert "block5_conv3   conv5_3" in result.output and "138,357,544" in result.output and "15.47 G" in result.output
    data = json.loads(runner.invoke(cli, ["info", "--arch", "vgg16", "--dense", "--input-size", "448",
                                          "--json"]).output)
    fc7 = [r for r in data["layers"] if r["alias"] == "fc7"][0]
    assert fc7["output_shape"] == [8, 8, 4096] and data["total_params"] == 138_357_544


def test_info_error_is_one_line():
    result = CliRunner().invoke(cli, ["info", "--arch", "vgg17"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "Error: unknown architecture 'vgg17'; choose one of vgg11 (A), vgg11-lrn (A-LRN), vgg13 (B), vgg16c (C), "
        "vgg16 (D), vgg19 (E), vgg11-bn (A-BN), vgg13-bn (B-BN), vgg16-bn (D-BN), vgg19-bn (E-BN)"]


def _one_line_error(result, pattern, tmp_path):
    import re

    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out.h5").exists()


FAST = ["--arch", "vgg11", "--weights", "random", "--input-size", "32", "-q"]


def test_user_mistakes_are_one_line_errors_and_write_nothing(tmp_path, image_folder):
    out = tmp_path / "out.h5"
    _one_line_error(run_cli("extract", tmp_path / "missing", "-o", out, *FAST), r"input not found: .*missing", tmp_path)
    (tmp_path / "empty").mkdir()
    _one_line_error(run_cli("extract", tmp_path / "empty", "-o", out, *FAST), r"no images found in", tmp_path)
    _one_line_error(run_cli("extract", image_folder, "-o", out, "--layer", "fc9", *FAST),
                    r"unknown layer 'fc9' for vgg11; valid layers: conv1_1, pool1, .*fc6, fc7, fc8", tmp_path)
    (tmp_path / "w.h5").write_bytes(b"not hdf5")
    _one_line_error(run_cli("extract", image_folder, "-o", out, "--weights", tmp_path / "w.h5", "-q"),
                    r"cannot read weight file", tmp_path)
    _one_line_error(run_cli("extract", image_folder, "-o", out, "--arch", "vgg13", "-q"),
                    r"no ImageNet weights exist for vgg13", tmp_path)


def test_weight_file_that_does_not_fit_the_arch(tmp_path, image_folder):
    from vggfeat.models import build_vgg

    build_vgg("vgg13", input_size=32, seed=0).save_weights(tmp_path / "b.weights.h5")
    result = run_cli("extract", image_folder, "-o", tmp_path / "out.h5", "--arch", "vgg16",
                     "--weights", tmp_path / "b.weights.h5", "-q")
    _one_line_error(result, r"holds a vgg13 network and does not fit vgg16", tmp_path)


def test_existing_output_exit_code_and_summary(tmp_path, image_folder):
    out = tmp_path / "out.h5"
    ok = run_cli("extract", image_folder, "-o", out, *FAST[:-1])
    assert ok.returncode == 0, ok.stderr
    lines = ok.stderr.strip().splitlines()
    # what was found and what is loaded come first (before TensorFlow's import), then the summary
    assert lines[:2] == ["Found 12 images in 3 classes", "loading vgg11 with random weights (seed 0)..."], ok.stderr
    assert "12 images written, 0 failed" in lines[-1]
    again = run_cli("extract", image_folder, "-o", out, *FAST)
    assert again.returncode == 2
    assert again.stderr.strip() == f"Error: {out} exists; pass --resume to continue it or --overwrite to replace it"


def test_shared_options_are_defined_once():
    """The options several commands share come from cli/_common.py: same flags, types and help everywhere."""

    def option(command, flag):
        found = [p for p in cli.commands[command].params if flag in p.opts]
        assert found, f"{command} has no {flag}"
        return found[0]

    def same(flag, *commands):
        first = option(commands[0], flag)
        for name in commands[1:]:
            other = option(name, flag)
            assert (other.help, repr(other.type), other.is_flag) == (first.help, repr(first.type), first.is_flag), \
                (flag, name)

    same("--arch", "extract", "finetune", "info")
    same("--precision", "extract", "finetune")
    same("--ext", "extract", "predict")
    same("--exclude", "extract", "predict")
    same("--quiet", "extract", "predict")
    same("--overwrite", "classify", "predict")
    assert repr(option("info", "--input-size").type) == repr(option("extract", "--input-size").type)
    assert repr(option("finetune", "--input-size").type) == repr(option("extract", "--input-size").type)


def test_click_choices_are_the_librarys_constants():
    """A value the library accepts is one the CLI offers, and the other way round (one list each)."""
    from vggfeat.classifier import CLASSIFIERS
    from vggfeat.io import COMPRESSIONS, DTYPES
    from vggfeat.run import ENGINES

    def choices(command, flag):
        return tuple(next(p for p in cli.commands[command].params if flag in p.opts).type.choices)

    assert choices("extract", "--dtype") == DTYPES
    assert choices("extract", "--compression") == COMPRESSIONS
    assert choices("extract", "--engine") == ENGINES
    assert choices("classify", "--kind") == CLASSIFIERS


def test_one_meaning_per_flag_classify_kind_and_split_seed(tmp_path):
    """`--classifier` names a classifier file (predict) and `--seed` seeds random weights (extract,
    finetune); classify's own are `--kind` and `--split-seed`, its older names still read with a note."""
    import numpy as np

    from vggfeat.io.writer import FeatureWriter

    path = tmp_path / "f.h5"
    w = FeatureWriter.create(path, settings={"arch": "vgg11", "weights": "random", "layers": '["fc7"]'},
                             feature_shapes={"fc7": (4,)}, class_names=["a", "b"])
    rng = np.random.default_rng(0)
    w.append([f"{i}.png" for i in range(20)], [i % 2 for i in range(20)],
             {"fc7": rng.random((20, 4), np.float32) + np.arange(20)[:, None] % 2})
    w.close(complete=True)
    new = run_cli("classify", path, "--kind", "knn", "--split-seed", "3", "--cv", "2")
    old = run_cli("classify", path, "--classifier", "knn", "--seed", "3", "--cv", "2")
    assert new.returncode == old.returncode == 0, new.stderr + old.stderr
    assert new.stdout == old.stdout and new.stdout.startswith("knn + L2 normalisation")
    assert "--classifier of classify is now --kind" in old.stderr and not new.stderr
    clash = run_cli("classify", path, "--kind", "knn", "--classifier", "logreg")
    assert clash.returncode == 2 and "--classifier is the older name of --kind" in clash.stderr
    assert "--classifier" not in run_cli("classify", "--help").stdout
