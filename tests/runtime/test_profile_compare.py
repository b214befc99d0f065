"""`alignkd profile-compare`: host, native and phone profile JSON side by side, as a table, JSON and a plot.

The host column is a real `alignkd profile` of the tiny checkpoint; the native and phone files have the keys the
runner and the demo apps write (their real output is compared in tests/export/test_device_native.py).
"""

import json

import pytest
from typer.testing import CliRunner

from alignkd.cli import app
from alignkd.errors import AlignKDError
from alignkd.runtime.profile_compare import compare, format_compare, load_profile
from tests.runtime.test_device import app_profile


@pytest.fixture(scope="module")
def host_json(tmp_path_factory, fixture_dir):
    from alignkd.runtime.profile import profile

    path = tmp_path_factory.mktemp("profiles") / "host.json"
    path.write_text(json.dumps(profile(fixture_dir / "checkpoint", runs=1, warmup=0, max_new_tokens=2)))
    return path


@pytest.fixture
def files(tmp_path, host_json):
    native = app_profile(runtime="native", decode_tok_s=1945.0, device={"name": "host", "cpu": "Xeon", "threads": 2})
    android = app_profile(decode_tok_s=None)  # a phone run may leave a metric null
    ios = app_profile(device={"name": "ios", "model": "iPhone16,1", "cpu": "iPhone16,1", "threads": "auto",
                              "runtime": "coreml"}, kind="coreml")
    paths = [host_json]
    for name, data in (("native", native), ("android", android), ("ios", ios)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(data))
    return paths


def test_one_column_per_run_named_by_device_and_runtime(files):
    table = compare(files)
    labels = [run["label"] for run in table["runs"]]
    assert labels == ["host (python)", "host (native)", "android Pixel 8 (executorch-android 1.5.1)", "ios iPhone16,1 (coreml)"]
    host = json.loads(files[0].read_text())
    assert table["runs"][0]["decode_tok_s"] == host["decode_tok_s"] and table["runs"][1]["decode_tok_s"] == 1945.0
    text = format_compare(table)
    assert "host (python)" in text and "1,945.0" in text and "n/a" in text  # the android run's null decode speed


def test_cli_table_json_and_plot(files, tmp_path):
    plot = tmp_path / "plots" / "compare.png"
    result = CliRunner().invoke(app, ["profile-compare", *map(str, files), "--plot", str(plot), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert len(out["runs"]) == 4 and out["plot"] == str(plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000
    result = CliRunner().invoke(app, ["profile-compare", *map(str, files)])
    assert result.exit_code == 0 and "decode (tok/s)" in result.output


def test_same_device_twice_gets_file_names(files):
    labels = [run["label"] for run in compare([files[1], files[1]])["runs"]]
    assert labels == ["host (native) [native.json]"] * 2


@pytest.mark.parametrize("content,message", [
    (None, "does not exist"),
    ("{not json", "is not readable JSON"),
    ("[1, 2]", "holds a JSON list, not a profile object"),
    ('{"text": "hi", "output_ids": [1]}', r"is not an alignkd profile \(missing model, kind"),
])
def test_bad_files_are_one_sentence(tmp_path, content, message):
    path = tmp_path / "p.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(AlignKDError, match=message):
        load_profile(path)
    result = CliRunner().invoke(app, ["profile-compare", str(path)])
    assert result.exit_code == 2 and result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1


def test_device_without_name_and_text_numbers(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(app_profile(device={"cpu": "x"})))
    with pytest.raises(AlignKDError, match=r"missing device.name"):
        load_profile(path)
    path.write_text(json.dumps(app_profile(decode_tok_s="fast")))
    with pytest.raises(AlignKDError, match="non-numeric decode_tok_s"):
        load_profile(path)
