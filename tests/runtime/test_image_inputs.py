"""`alignkd generate` and `alignkd profile` with a decompression-bomb image: one line, before the model loads."""

import pytest

from tests.data.test_image import _png_header_only


@pytest.mark.parametrize("command", ["generate", "profile"])
def test_huge_image_is_one_line_naming_file_and_limit(command, fixture_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from alignkd.cli import app
    from alignkd.data.image import MAX_IMAGE_PIXELS

    monkeypatch.setattr("alignkd.runtime.loader.load_model", lambda *a, **k: pytest.fail("model loaded"))
    bomb = _png_header_only(tmp_path / "bomb.png", 20000, 20000)
    model = str(fixture_dir / "checkpoint")
    args = (["generate", "--model", model, "--prompt", "what?", "--image", str(bomb)] if command == "generate"
            else ["profile", model, "--image", str(bomb), "--runs", "1", "--warmup", "0"])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: image {bomb} has more pixels than the limit of {MAX_IMAGE_PIXELS:,} and is not decoded; "
                      "resize it (the model sees it at a few hundred pixels a side)"]
