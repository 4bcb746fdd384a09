"""Tile store: local folder and S3 (moto server), layout, georeferencing, atomic writes, crashes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from lcms.geometry import PixelGrid
from lcms.sentinel2 import L1C_BANDS
from lcms.store import LAYOUTS, StoreError, TileStore

GRID = PixelGrid.from_bounds("EPSG:32633", (460_000, 5_090_000, 463_000, 5_093_000), 10.0)  # 300 × 300 px
DATES = np.array(["2023-01-03", "2023-04-11", "2023-07-20", "2023-10-02"], dtype="datetime64[s]")
COORDS = {"time": DATES, "band": np.array(L1C_BANDS)}


def sample_arrays(seed=0):
    """Every array of the download layout, random but consistent (no data → 0 / 255 / False)."""
    rng = np.random.default_rng(seed)
    bands = rng.integers(1, 12_000, size=(len(DATES), *GRID.shape, len(L1C_BANDS)), dtype=np.uint16)
    data_mask = rng.random((len(DATES), *GRID.shape)) > 0.1
    bands[~data_mask] = 0
    cloud_prob = np.where(data_mask, rng.integers(0, 101, data_mask.shape), 255).astype(np.uint8)
    cloud_mask = data_mask & (cloud_prob >= 40)
    shadow_mask = data_mask & ~cloud_mask & (rng.random(data_mask.shape) > 0.9)
    valid_mask = data_mask & ~cloud_mask & ~shadow_mask
    return {
        "bands": bands,
        "data_mask": data_mask,
        "cloud_prob": cloud_prob,
        "cloud_mask": cloud_mask,
        "shadow_mask": shadow_mask,
        "valid_mask": valid_mask,
        "valid_coverage": valid_mask.mean(axis=(1, 2)).astype(np.float32),
    }


def write_arrays(writer, arrays, block):
    for region, _ in GRID.blocks(block):
        rows, cols = region
        for name, values in arrays.items():
            if name != "valid_coverage":
                writer.write(name, values[:, rows, cols], region)
    writer.write("valid_coverage", arrays["valid_coverage"])


def write_tile(store, tile_id="T1", seed=0, params="p1", block=256):
    arrays = sample_arrays(seed)
    with store.writer("download", 2023, tile_id, GRID, params, COORDS) as writer:
        write_arrays(writer, arrays, block)
    return arrays["bands"], arrays["data_mask"]


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return TileStore(str(tmp_path / "store"))
    bucket = request.getfixturevalue("s3_bucket")
    endpoint = request.getfixturevalue("s3_endpoint")
    return TileStore(f"{bucket}/stores/test", {"endpoint_url": endpoint})


def test_round_trip_block_writes(store):
    store.ensure_writable()
    bands, data_mask = write_tile(store)
    reader = store.open_tile("download", 2023, "T1")
    np.testing.assert_array_equal(reader.read("bands"), bands)
    np.testing.assert_array_equal(reader.read("data_mask"), data_mask)
    np.testing.assert_array_equal(reader.read("bands", (slice(10, 20), slice(250, 300))), bands[:, 10:20, 250:300])
    np.testing.assert_array_equal(reader.coord("time"), DATES)
    assert list(reader.coord("band")) == list(L1C_BANDS)
    assert reader.grid == GRID


def test_large_writes_and_reads_go_a_group_of_chunks_at_a_time(tmp_path, monkeypatch):
    """A whole-tile write or read of 13 band chunks per pixel block is cut into calls of at most zarr's
    concurrency in chunks (bounding the encoded copies held at once), and still round-trips exactly."""
    store = TileStore(str(tmp_path / "store"))
    calls = []
    original = zarr.Array.__setitem__

    def counting_setitem(self, selection, value):
        calls.append(np.shape(value))
        return original(self, selection, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", counting_setitem)
    arrays = sample_arrays(3)
    with zarr.config.set({"async.concurrency": 4}):
        with store.writer("download", 2023, "T1", GRID, "p1", COORDS) as writer:
            writer.write("bands", arrays["bands"])  # 300² px: 2 × 2 spatial chunks per band
            for name in ("data_mask", "cloud_prob", "cloud_mask", "shadow_mask", "valid_mask", "valid_coverage"):
                writer.write(name, arrays[name])
        band_calls = [shape for shape in calls if len(shape) == 4]
        # 4 spatial chunks per band and 4 chunks per call: one band per call, 13 calls
        assert band_calls == [(len(DATES), 300, 300, 1)] * len(L1C_BANDS)
        reader = store.open_tile("download", 2023, "T1")
        np.testing.assert_array_equal(reader.read("bands"), arrays["bands"])
        np.testing.assert_array_equal(
            reader.read("bands", (slice(5, 290), slice(3, 7))), arrays["bands"][:, 5:290, 3:7]
        )
        np.testing.assert_array_equal(reader.read("valid_mask"), arrays["valid_mask"])


def test_layout_dtypes_chunks_and_compression(store):
    store.ensure_writable()
    write_tile(store)
    group = store.open_tile("download", 2023, "T1").group
    assert set(group.array_keys()) >= {a.name for a in LAYOUTS["download"].arrays}
    for spec in LAYOUTS["download"].arrays:
        array = group[spec.name]
        assert array.dtype == np.dtype(spec.dtype)
        assert array.metadata.dimension_names == spec.dims
        sizes = {"time": len(DATES), "y": 300, "x": 300, "band": 13}
        assert array.chunks == spec.chunks_for(sizes)
        assert array.fill_value == spec.fill_value
        codec = array.metadata.codecs[-1].to_dict()
        assert codec["name"] == "blosc" and codec["configuration"]["cname"] == "zstd"
        # bit shuffle for multi-byte values (DNs, coverage), none for one-byte masks and probabilities
        shuffle = "noshuffle" if np.dtype(spec.dtype).itemsize == 1 else "bitshuffle"
        assert codec["configuration"]["shuffle"] == shuffle, spec.name
    assert group["bands"].chunks == (4, 256, 256, 1)


def test_stores_written_with_byte_shuffle_stay_readable(tmp_path, monkeypatch):
    """A store written by the previous codec (byte shuffle, zstd level 3) reads back the same."""
    from zarr.codecs import BloscCodec

    import lcms.store

    store = TileStore(str(tmp_path / "store"))
    monkeypatch.setattr(lcms.store, "_compressor", lambda dtype: BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"))
    bands, data_mask = write_tile(store)
    monkeypatch.undo()
    reader = store.open_tile("download", 2023, "T1")
    assert reader.group["bands"].metadata.codecs[-1].to_dict()["configuration"]["shuffle"] == "shuffle"
    np.testing.assert_array_equal(reader.read("bands"), bands)
    np.testing.assert_array_equal(reader.read("data_mask"), data_mask)
    write_tile(store, tile_id="T2")  # new writes beside it use bit shuffle
    new = store.open_tile("download", 2023, "T2").group["bands"]
    assert new.metadata.codecs[-1].to_dict()["configuration"]["shuffle"] == "bitshuffle"
    np.testing.assert_array_equal(new[...], bands)


def test_opens_georeferenced_in_xarray(store):
    store.ensure_writable()
    bands, data_mask = write_tile(store)
    ds = store.open_dataset("download", 2023, "T1")
    assert ds.rio.crs.to_epsg() == 32633
    assert tuple(ds.rio.transform())[:6] == tuple(GRID.affine)[:6]
    assert ds.bands.dtype == np.uint16 and ds.data_mask.dtype == bool
    np.testing.assert_array_equal(ds.time.values.astype("datetime64[s]"), DATES)
    b04 = ds.bands.sel(band="B04").isel(time=2).values
    np.testing.assert_array_equal(b04, bands[2, :, :, 3])
    # Pixel centres: the first column sits half a pixel east of the grid's west edge.
    assert float(ds.x[0]) == GRID.bounds[0] + 5 and float(ds.y[0]) == GRID.bounds[3] - 5


def test_local_and_s3_read_back_identically(tmp_path, s3_bucket, s3_endpoint):
    local = TileStore(str(tmp_path / "store"))
    remote = TileStore(f"{s3_bucket}/x", {"endpoint_url": s3_endpoint})
    for target in (local, remote):
        target.ensure_writable()
        write_tile(target, seed=3)
    a = local.open_dataset("download", 2023, "T1").load()
    b = remote.open_dataset("download", 2023, "T1").load()
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
    assert a.attrs["pixel_grid"] == b.attrs["pixel_grid"]


def test_done_marks_record_the_params_hash(store):
    store.ensure_writable()
    assert not store.is_done("download", 2023, "T1")
    write_tile(store, params="p1")
    assert store.is_done("download", 2023, "T1")
    assert store.is_done("download", 2023, "T1", "p1")
    assert not store.is_done("download", 2023, "T1", "p2")
    write_tile(store, tile_id="T2")
    assert sorted(store.done_tiles("download", 2023)) == ["T1", "T2"]
    assert store.done_tiles("download", 2024) == {}


def test_overwrite_replaces_atomically_and_removes_the_old_attempt(store):
    store.ensure_writable()
    old_bands, _ = write_tile(store, seed=1)
    old_attempt = store.done_record("download", 2023, "T1").attempt
    new = sample_arrays(seed=2)
    new_bands = new["bands"]
    writer = store.writer("download", 2023, "T1", GRID, "p2", COORDS)
    writer.write("bands", new_bands)
    # Mid-write, readers still see the old, complete output.
    np.testing.assert_array_equal(store.open_tile("download", 2023, "T1").read("bands"), old_bands)
    write_arrays(writer, {k: v for k, v in new.items() if k != "bands"}, 512)
    writer.commit()
    record = store.done_record("download", 2023, "T1")
    assert record.params_hash == "p2" and record.attempt != old_attempt
    np.testing.assert_array_equal(store.open_tile("download", 2023, "T1").read("bands"), new_bands)
    store.fs.invalidate_cache()
    left = store.fs.ls(store.tile_dir("download", 2023, "T1"))
    assert sorted(p.rsplit("/", 1)[-1] for p in left) == sorted([f"{record.attempt}.zarr", "done.json"])


def test_incomplete_or_failed_writes_never_count_as_done(store):
    store.ensure_writable()
    arrays = sample_arrays()
    bands = arrays["bands"]
    writer = store.writer("download", 2023, "T1", GRID, "p1", COORDS)
    write_arrays(writer, {k: v for k, v in arrays.items() if k != "data_mask"}, 512)
    writer.write("data_mask", arrays["data_mask"][:, :100], (slice(0, 100), slice(None)))
    with pytest.raises(StoreError, match=r"\['data_mask'\] are not completely written"):
        writer.commit()
    assert not store.is_done("download", 2023, "T1")

    with pytest.raises(RuntimeError, match="boom"):
        with store.writer("download", 2023, "T1", GRID, "p1", COORDS) as failing:
            failing.write("bands", bands)
            raise RuntimeError("boom")
    assert not store.is_done("download", 2023, "T1")
    assert not store.fs.exists(failing.path)


def test_writes_of_the_wrong_dtype_or_shape_are_refused(tmp_path):
    store = TileStore(str(tmp_path / "s"))
    bands = sample_arrays()["bands"]
    writer = store.writer("download", 2023, "T1", GRID, "p1", COORDS)
    with pytest.raises(StoreError, match="valid_coverage is written whole"):
        writer.write("valid_coverage", np.zeros(3, np.float32))
    with pytest.raises(StoreError, match="bands must be uint16, got float32"):
        writer.write("bands", bands.astype(np.float32))
    with pytest.raises(StoreError, match="expects shape"):
        writer.write("bands", bands[:, :10], (slice(0, 20), slice(None)))
    with pytest.raises(StoreError, match="has no array 'ndvi'"):
        writer.write("ndvi", bands)
    with pytest.raises(StoreError, match=r"needs coordinates for \['band'\]"):
        store.writer("download", 2023, "T1", GRID, "p1", {"time": DATES})
    with pytest.raises(StoreError, match="unknown stage 'features2'"):
        store.writer("features2", 2023, "T1", GRID, "p1", COORDS)


def test_a_year_without_acquisitions_is_a_valid_empty_tile(tmp_path):
    store = TileStore(str(tmp_path / "s"))
    no_dates = {"time": np.array([], dtype="datetime64[s]"), "band": np.array(L1C_BANDS)}
    with store.writer("download", 2023, "T1", GRID, "p1", no_dates) as writer:
        writer.write("bands", np.zeros((0, 300, 300, 13), np.uint16))
        writer.write("cloud_prob", np.zeros((0, 300, 300), np.uint8))
        for name in ("data_mask", "cloud_mask", "shadow_mask", "valid_mask"):
            writer.write(name, np.zeros((0, 300, 300), bool))
        writer.write("valid_coverage", np.zeros(0, np.float32))
    ds = store.open_dataset("download", 2023, "T1")
    assert ds.sizes["time"] == 0 and ds.rio.crs.to_epsg() == 32633


def test_unwritable_store_urls_fail_clearly_and_write_nothing(tmp_path, s3_endpoint):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="cannot be written"):
        TileStore(str(blocker / "store")).ensure_writable()
    with pytest.raises(StoreError, match="s3://no-such-bucket/x.*bucket exists"):
        TileStore("s3://no-such-bucket/x", {"endpoint_url": s3_endpoint}).ensure_writable()
    assert blocker.read_text() == "not a folder"


def test_store_of_another_format_is_refused(tmp_path):
    root = tmp_path / "s"
    root.mkdir()
    (root / "store.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(StoreError, match="format 99"):
        TileStore(str(root)).ensure_writable()


KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from lcms.store import TileStore
    sys.path.insert(0, {tests!r})
    from test_store import GRID, COORDS, sample_arrays

    store = TileStore({url!r}, {options!r})
    arrays = sample_arrays(seed=5)
    writer = store.writer("download", 2023, "T1", GRID, "p2", COORDS)
    for i, (region, _) in enumerate(GRID.blocks(100)):
        rows, cols = region
        for name in ("bands", "data_mask"):
            writer.write(name, arrays[name][:, rows, cols], region)
        print("wrote block", i, flush=True)
        time.sleep(0.3)
    writer.commit()
    """
)


def test_killing_a_write_midway_leaves_the_previous_state_and_a_rerun_completes(store, tmp_path):
    store.ensure_writable()
    old_bands, _ = write_tile(store, seed=1, params="p1")
    script = KILLED_WRITER.format(tests=str(Path(__file__).parent), url=store.url, options=store.storage_options)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("wrote block 3"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # The killed attempt left arrays behind, but the tile still shows its old, complete state.
    record = store.done_record("download", 2023, "T1")
    assert record.params_hash == "p1"
    store.fs.invalidate_cache()
    attempts = store.fs.glob(f"{store.tile_dir('download', 2023, 'T1')}/attempt-*.zarr")
    assert len(attempts) == 2
    np.testing.assert_array_equal(store.open_tile("download", 2023, "T1").read("bands"), old_bands)
    assert not store.is_done("download", 2023, "T1", "p2")
    # A rerun completes the tile and clears the orphaned attempt.
    new_bands, _ = write_tile(store, seed=5, params="p2")
    assert store.is_done("download", 2023, "T1", "p2")
    np.testing.assert_array_equal(store.open_tile("download", 2023, "T1").read("bands"), new_bands)
    store.fs.invalidate_cache()
    assert len(store.fs.glob(f"{store.tile_dir('download', 2023, 'T1')}/attempt-*.zarr")) == 1


def test_grid_is_stored_with_its_settings_hash(store):
    import geopandas as gpd
    from shapely.geometry import box

    from lcms.config import GridConfig
    from lcms.grid import aoi_to_wgs84, build_grid

    store.ensure_writable()
    assert store.grid_params_hash() is None
    with pytest.raises(StoreError, match="no grid yet"):
        store.read_grid()
    grid = build_grid(aoi_to_wgs84(gpd.GeoDataFrame(geometry=[box(14.0, 46.0, 14.3, 46.2)], crs=4326)), GridConfig())
    store.write_grid(grid, "g1")
    assert store.grid_params_hash() == "g1"
    assert store.read_grid().tile_ids == grid.tile_ids


def test_zarr_group_is_plain_zarr_v3(tmp_path):
    store = TileStore(str(tmp_path / "s"))
    write_tile(store)
    url = store.open_tile("download", 2023, "T1").url
    group = zarr.open_group(url, mode="r")
    assert group.metadata.zarr_format == 3
    assert group.attrs["tile_id"] == "T1" and group.attrs["lcms_stage"] == "download"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_aoi_products_rows_and_files_round_trip(tmp_path, where, request):
    """Merged samples written tile by tile, and a model's files, local and on moto's S3."""
    url = str(tmp_path / "store") if where == "local" else request.getfixturevalue("s3_bucket") + "/store"
    store = TileStore(url)
    rng = np.random.default_rng(0)
    features = rng.integers(-5000, 5000, (50_000, 12), dtype=np.int16)
    coords = {"sample": np.arange(50_000), "column": np.array([f"F{i}@01-{i + 1:02d}" for i in range(12)])}
    small = {
        "label": np.uint8,
        "split": np.uint8,
        "tile": np.uint32,
        "year": np.int16,
        "row": np.int32,
        "col": np.int32,
    }
    with store.product_writer("merge", "lc", "h1", coords, {"tile_ids": ["a", "b"]}) as writer:
        for name, dtype in small.items():
            writer.write(name, np.ones(50_000, dtype))
        writer.write_rows("features", features[:20_000], 0)
        with pytest.raises(StoreError, match="not completely written"):
            writer.commit()
        with pytest.raises(StoreError, match="do not fit"):
            writer.write_rows("features", features[:20_000], 40_000)
        writer.write_rows("features", features[20_000:], 20_000)
    reader = store.open_product("merge", "lc")
    np.testing.assert_array_equal(reader.read("features"), features)
    assert reader.grid is None and reader.attrs["tile_ids"] == ["a", "b"]
    assert store.product_record("merge", "lc").params_hash == "h1"
    with pytest.raises(StoreError, match="no finished 'merge' output named 'other'"):
        store.open_product("merge", "other")

    model = tmp_path / "model"
    model.mkdir()
    (model / "model.txt").write_text("trees")
    (model / "plot.png").write_bytes(b"\x89PNG")
    first = store.put_files("training", "lc", model, "h2")
    (model / "model.txt").write_text("better trees")
    second = store.put_files("training", "lc", model, "h3", extra={"oa": 0.9})
    assert store.read_file("training", "lc", "model.txt") == b"better trees"
    fetched = store.get_files("training", "lc", tmp_path / "fetched")
    assert (tmp_path / "fetched" / "plot.png").read_bytes() == b"\x89PNG"
    assert fetched.extra == {"oa": 0.9} and first.attempt != second.attempt
    # Models are versioned: the older one is kept, with its own record, and can still be fetched.
    assert [v.attempt for v in store.versions("training", "lc")] == [first.attempt, second.attempt]
    store.get_files("training", "lc", tmp_path / "old", version=first.attempt)
    assert (tmp_path / "old" / "model.txt").read_text() == "trees"
    # Other file products keep only the current attempt.
    report = store.put_files("report", "lc", model, "r1")
    store.put_files("report", "lc", model, "r2")
    assert not store.fs.exists(f"{store.product_dir('report', 'lc')}/{report.attempt}")
    with pytest.raises(StoreError, match="not a year"):
        store.product_dir("merge", "2023")
