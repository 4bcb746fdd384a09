"""Bad input through the real `lcms` command: each case exits non-zero with one clear `error:` line.

The cases are those of issue 17, point 5. Each test reads stderr as a user would see it and
checks the exit code, that there is exactly one error line (no traceback), and its wording.
The S3 cases run with no AWS settings in the environment and no S3 client cached by other tests.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import geopandas as gpd
import pytest
import yaml
from shapely.geometry import box
from typer.testing import CliRunner

from lcms.cli import app


def write_config(path: Path, **overrides) -> Path:
    data = {
        "name": "errors",
        "aoi": {"bbox": [14.40, 46.00, 14.45, 46.03]},
        "years": [2023, 2024],
        "store": {"url": str(path.parent / "store")},
    }
    data.update(overrides)
    path.write_text(yaml.safe_dump(data))
    return path


def the_error_line(stderr: str) -> str:
    """The single `error:` line of stderr; fails when there is a traceback or more than one."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stderr


# --------------------------------------------------------------------------- the config file


def test_a_folder_given_as_the_config(tmp_path):
    write_config(tmp_path / "run.yaml")
    code, stderr = run_cli("validate", str(tmp_path))
    assert code == 2
    line = the_error_line(stderr)
    assert "is a folder, not a config file" in line and "run.yaml" in line
    assert "does not exist" not in line


def test_a_config_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: café\naoi: {bbox: [14.4, 46.0, 14.5, 46.1]}\nyears: [2024]\n".encode("latin-1"))
    code, stderr = run_cli("validate", str(path))
    assert code == 2
    line = the_error_line(stderr)
    assert f"config {path} is not UTF-8 text (byte 0xe9" in line and "save it as UTF-8" in line


def test_change_years_message_keeps_its_brackets(tmp_path):
    # "[earlier, later]" was taken for rich markup and vanished: "must be , got".
    path = write_config(tmp_path / "run.yaml", change={"years": [2024, 2023]})
    code, stderr = run_cli("validate", str(path))
    assert code == 2
    assert "change.years must be [earlier, later], got [2024, 2023]" in stderr
    assert "Traceback" not in stderr


# --------------------------------------------------------------------------- bounding boxes


def test_bbox_of_nans_in_the_config_and_on_the_command_line(tmp_path):
    path = write_config(tmp_path / "nan.yaml", aoi={"bbox": [float("nan")] * 4})
    code, stderr = run_cli("validate", str(path))
    assert code == 2
    assert "aoi.bbox:" in stderr and "bbox must be four finite numbers" in stderr and "Traceback" not in stderr

    good = write_config(tmp_path / "run.yaml")
    code, stderr = run_cli("download", str(good), "--bbox", "nan,nan,nan,nan")
    assert code == 2
    assert the_error_line(stderr) == (
        "error: --bbox nan,nan,nan,nan must be four finite numbers minx, miny, maxx, maxy"
    )


def test_inverted_latitudes_are_refused_alike_by_the_config_and_the_command_line(tmp_path):
    inverted = [14.40, 46.03, 14.45, 46.00]  # miny > maxy
    path = write_config(tmp_path / "inverted.yaml", aoi={"bbox": inverted})
    code, stderr = run_cli("validate", str(path))
    assert code == 2
    assert "aoi.bbox:" in stderr and "bbox must have miny < maxy, got miny 46.03 and maxy 46" in stderr

    good = write_config(tmp_path / "run.yaml")
    code, stderr = run_cli("download", str(good), "--bbox", ",".join(map(str, inverted)))
    assert code == 2
    assert "must have miny < maxy, got miny 46.03 and maxy 46" in the_error_line(stderr)


def test_longitudes_out_of_range_point_to_the_antimeridian_form(tmp_path):
    good = write_config(tmp_path / "run.yaml")
    code, stderr = run_cli("download", str(good), "--bbox", "179,-17,181,-16")
    assert code == 2
    line = the_error_line(stderr)
    assert "longitudes must lie in [-180, 180]" in line and "minx > maxx, e.g. 179,-17,-179,-16" in line

    path = write_config(tmp_path / "wide.yaml", aoi={"bbox": [179, -17, 181, -16]})
    code, stderr = run_cli("validate", str(path))
    assert code == 2 and "longitudes must lie in [-180, 180]" in stderr


def test_minx_greater_than_maxx_is_the_antimeridian_in_both_places(tmp_path):
    # Accepted in the config (a box across 180°) ...
    path = write_config(tmp_path / "fiji.yaml", aoi={"bbox": [179.9, -16.6, -179.9, -16.4]})
    code, stderr = run_cli("validate", str(path))
    assert code == 0, stderr
    # ... but not in a projected CRS, where there is no antimeridian.
    path = write_config(
        tmp_path / "utm.yaml", aoi={"bbox": [465_000, 5_090_000, 460_000, 5_095_000], "bbox_crs": "EPSG:32633"}
    )
    code, stderr = run_cli("validate", str(path))
    assert code == 2
    assert "must have minx < maxx" in stderr and "only a box in degrees may" in stderr
    # In degrees too, a box from 14.45°E all the way round to 14.40°E is an inverted box, not one across 180°.
    inverted = write_config(tmp_path / "inverted.yaml", aoi={"bbox": [14.45, 46.00, 14.40, 46.03]})
    code, stderr = run_cli("validate", str(inverted))
    assert code == 2 and "aoi.bbox:" in stderr and "must have minx < maxx, got minx 14.45 and maxx 14.4" in stderr
    code, stderr = run_cli("download", str(path.with_name("fiji.yaml")), "--bbox", "14.45,46.00,14.40,46.03")
    assert code == 2 and "must have minx < maxx, got minx 14.45 and maxx 14.4" in the_error_line(stderr)


# --------------------------------------------------------------------------- the AOI file


def test_projected_coordinates_in_a_file_labelled_wgs84(tmp_path):
    aoi = tmp_path / "utm-as-wgs84.geojson"
    # UTM 33N numbers (Ljubljana) written as if they were degrees: what a missing .prj or a bad export gives.
    gpd.GeoDataFrame(geometry=[box(460_000, 5_090_000, 470_000, 5_800_000)], crs="EPSG:4326").to_file(aoi)
    path = write_config(tmp_path / "run.yaml", aoi={"path": str(aoi)})
    code, stderr = run_cli("validate", str(path))
    assert code == 1
    line = the_error_line(stderr)
    assert "coordinates look projected (x up to 4.7e+05, y up to 5.8e+06) but the file says EPSG:4326" in line
    assert "polar" not in line


# --------------------------------------------------------------------------- S3 stores


@pytest.fixture
def no_aws(monkeypatch):
    """An environment with no AWS settings at all, and no S3 client cached from other tests."""
    s3fs = pytest.importorskip("s3fs")
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("LCMS_S3_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("LCMS_S3_CONNECT_TIMEOUT", "2")
    s3fs.S3FileSystem.clear_instance_cache()
    yield monkeypatch
    s3fs.S3FileSystem.clear_instance_cache()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_s3_store_without_credentials(tmp_path, no_aws):
    path = write_config(tmp_path / "run.yaml", store={"url": "s3://lcms-bucket/runs/x"})
    code, stderr = run_cli("grid", str(path))
    assert code == 1
    assert the_error_line(stderr) == (
        "error: S3 store s3://lcms-bucket/runs/x: no AWS credentials found (set AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or use an instance profile)"
    )


def test_s3_store_with_a_dead_endpoint(tmp_path, no_aws):
    port = _free_port()  # nothing listens there any more: connections are refused
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        no_aws.setenv(key, value)
    no_aws.setenv("AWS_DEFAULT_REGION", "us-east-1")
    no_aws.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    path = write_config(tmp_path / "run.yaml", store={"url": "s3://lcms-bucket/runs/x"})
    code, stderr = run_cli("grid", str(path))
    assert code == 1
    line = the_error_line(stderr)
    assert line.startswith(
        f'error: S3 store s3://lcms-bucket/runs/x: Could not connect to the endpoint URL: "http://127.0.0.1:{port}/'
    )
    assert line.endswith("check the network and the endpoint (AWS_ENDPOINT_URL or store.storage_options.endpoint_url)")
