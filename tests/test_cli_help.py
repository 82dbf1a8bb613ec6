"""`maskrcnn --help` and every command's help answer without importing torch."""

import subprocess
import sys

import pytest

COMMANDS = ["train", "eval", "predict", "export", "quantize", "shapes", "demo"]


@pytest.mark.parametrize("args", [["--help"], *[[c, "--help"] for c in COMMANDS]])
def test_help_does_not_import_torch(args):
    code = (f"import sys\nfrom maskrcnn.cli import main\ntry:\n    main({args!r})\n"
            "except SystemExit as e:\n    assert e.code == 0\n"
            "heavy = [m for m in ('torch', 'numpy', 'onnx') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "usage: maskrcnn" in result.stdout


def test_package_attributes_load_on_use():
    import maskrcnn

    assert callable(maskrcnn.load_model) and maskrcnn.Detections.__name__ == "Detections"
    assert set(maskrcnn.__all__) <= set(dir(maskrcnn))
    with pytest.raises(AttributeError):
        maskrcnn.no_such_thing  # noqa: B018


def test_train_help_lists_every_preset(capsys):
    from maskrcnn.cli import main
    from maskrcnn.config import PRESETS

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert {"paper_r50_c4", "paper_r101_c4", "paper_r50_fpn", "paper_r101_fpn",
            "paper_x101_fpn"} <= set(PRESETS)
    assert all(name in text for name in PRESETS)
