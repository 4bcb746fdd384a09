"""Named run configs: a country's config stored once on the Prefect server, and run by its name.

What a run's `config` may be (every stage flow and the country run take the same):

- a **name** (`slovenia`, `demo`): a named config, stored on the Prefect server as a block of type
  `lcms-run-config` by `lcms configs add NAME FILE` (or `lcms deploy`). The block holds the config
  as written in its file and the folder its relative paths are relative to; added with `--link`, it
  holds only the file or URL, which every run reads again;
- a **path** (`examples/demo.yaml`; relative to the run's working directory, the deployment's
  checkout) or a **URL** (`s3://bucket/configs/slovenia.yaml`, `https://...`: anything fsspec opens);
- the **whole config** (a mapping or a RunConfig), as power users type it in the UI's RunConfig tab.

What an operator changes for one run comes on top, checked against the config model so that a
typo fails at once with a message naming it: the years (plain or relative: lcms/config.py) and
single fields by dotted path (`overrides`, e.g. `{"features.min_valid_coverage": 0.7}`).

Relative paths in a file are relative to the file's folder, as for `lcms CONFIG`. A file under the
working directory of `lcms configs add` is stored with that folder relative to it, so a worker
whose checkout is elsewhere (a container's /opt/lcms) finds the same files in its own checkout.
Relative paths in a config read from a URL stay relative to the run's working directory.
"""

from __future__ import annotations

import copy
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from uuid import UUID

import yaml
from prefect.blocks.core import Block
from pydantic import BaseModel, Field, ValidationError

from lcms.config import ConfigError, RunConfig, TileSubset, format_validation_error, parse_config, resolve_years

BLOCK_TYPE = "lcms-run-config"
# Prefect's rule for block document names: lowercase letters, digits and dashes.
NAME_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_FILE_SUFFIXES = (".yaml", ".yml", ".json")


class NamedRunConfig(Block):
    """An LCMS run config stored under a name: what a run with `config: NAME` runs."""

    _block_type_name = "LCMS run config"
    _block_type_slug = BLOCK_TYPE
    _description = (
        "An LCMS run config (AOI, years, grid, store, cluster, stage settings) stored under a name. "
        "Deployments run it with `config: NAME`; `lcms configs add NAME FILE` writes it."
    )

    source: str = Field(..., description="The file or URL the config was registered from.")
    base_dir: str | None = Field(
        None,
        description="Folder the config's relative paths are resolved against; a relative folder is "
        "relative to the run's working directory (the deployment's checkout).",
    )
    config: dict[str, Any] | None = Field(
        None, description="The config as written in its file; empty when linked: `source` is then read at every run."
    )


# --------------------------------------------------------------------------- where a config comes from


@dataclass(frozen=True)
class ConfigSource:
    """Where a run's config came from, as run names and summaries show it."""

    kind: Literal["named", "file", "url", "inline"]
    ref: str  # as given: the name, the path or URL, or "<inline>"
    label: str  # short: the name, the file's stem, or the config's own name
    link: str | None = None  # the named config's page in the Prefect UI, or the file or URL
    registered_from: str | None = None  # a named config's file or URL

    def markdown(self) -> str:
        text = f"`{self.label}`" if self.link is None else f"[{self.label}]({self.link})"
        if self.kind == "named":
            linked = "" if self.registered_from is None else f", registered from `{self.registered_from}`"
            return f"{text} (named config{linked})"
        return {"file": f"{text} (file)", "url": f"{text} (URL)", "inline": f"{text} (typed in full)"}[self.kind]


def reference_kind(ref: str) -> Literal["named", "file", "url"]:
    """A URL has a scheme; a path has a folder or a config suffix (or exists); anything else is a name."""
    if "://" in ref:
        return "url"
    if "/" in ref or "\\" in ref or ref.endswith(_FILE_SUFFIXES) or Path(ref).is_file():
        return "file"
    return "named"


def _parse_text(text: str, where: str) -> dict:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config {where} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config {where} must hold a mapping of fields (name, aoi, years, ...)")
    return data


def read_location(ref: str) -> tuple[dict, Path | None]:
    """The mapping in a config file or at a URL, and the folder its relative paths are relative to."""
    if "://" not in ref:
        path = Path(ref).expanduser()
        if not path.is_file():
            raise ConfigError(f"Config file {ref} does not exist (working directory {Path.cwd()})")
        return _parse_text(path.read_text(), str(path)), path.resolve().parent
    import fsspec

    try:
        with fsspec.open(ref, "r") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise ConfigError(f"Config {ref} does not exist") from None
    except Exception as exc:  # a missing bucket, no credentials, an unknown scheme: say which URL
        raise ConfigError(f"Config {ref} cannot be read: {type(exc).__name__}: {exc}") from None
    if ref.startswith("file://"):
        return _parse_text(text, ref), Path(ref.removeprefix("file://")).resolve().parent
    return _parse_text(text, ref), None


def _portable(path: Path) -> str:
    """A path as stored in a named config: relative to the working directory when under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve())) or "."
    except ValueError:
        return str(path.resolve())


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise ConfigError(
            f"{name!r} is not a valid config name: use lowercase letters, digits and dashes (e.g. slovenia, demo-2024)"
        )
    return name


# --------------------------------------------------------------------------- the registry on the Prefect server


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def ui_link(block_document_id: UUID | str) -> str | None:
    """The named config's page in the Prefect UI (None without a UI URL, e.g. an ephemeral server)."""
    from prefect.utilities.urls import url_for

    return url_for("block-document", obj_id=block_document_id)


@dataclass(frozen=True)
class NamedConfigRecord:
    """A named config as stored: what `lcms configs list` and `show` print."""

    name: str
    id: UUID
    source: str
    base_dir: str | None
    config: dict | None

    @property
    def linked(self) -> bool:
        return self.config is None

    @property
    def link(self) -> str | None:
        return ui_link(self.id)

    def data(self) -> tuple[dict, Path | None]:
        """The config mapping and its base folder: the stored copy, or the linked file read now."""
        if self.config is None:
            return read_location(self.source)
        return copy.deepcopy(self.config), None if self.base_dir is None else Path(self.base_dir)


def _record(document) -> NamedConfigRecord:
    data = document.data
    return NamedConfigRecord(document.name, document.id, data["source"], data.get("base_dir"), data.get("config"))


def list_named_configs() -> list[NamedConfigRecord]:
    from prefect.exceptions import ObjectNotFound

    with _client() as client:
        try:
            documents = client.read_block_documents_by_type(block_type_slug=BLOCK_TYPE)
        except ObjectNotFound:  # no config was ever added: the block type is not registered yet
            return []
    return sorted((_record(d) for d in documents), key=lambda r: r.name)


def get_named_config(name: str) -> NamedConfigRecord:
    """The named config, or a ConfigError naming it and the names there are."""
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    check_name(name)
    with _client() as client:
        try:
            return _record(client.read_block_document_by_name(name=name, block_type_slug=BLOCK_TYPE))
        except ObjectNotFound:
            pass
    known = ", ".join(r.name for r in list_named_configs()) or "none yet"
    server = PREFECT_API_URL.value() or "the local Prefect database"
    raise ConfigError(
        f"no named config {name!r} on {server} (named configs: {known}); "
        f"add it with `lcms configs add {name} FILE`, or give a file path or URL"
    )


def add_named_config(name: str, location: str, *, link: bool = False) -> tuple[NamedConfigRecord, RunConfig]:
    """Validate the config at `location` (a file or URL), then store it under `name` (replacing one there).

    With `link`, only the location is stored, and each run reads it again.
    """
    check_name(name)
    if reference_kind(location) == "named":
        raise ConfigError(f"{location!r} is neither a file nor a URL")
    data, base_dir = read_location(location)
    config = parse_config(data, source=location, base_dir=base_dir)  # nothing is stored unless it is valid
    is_url = "://" in location and not location.startswith("file://")
    source = location if is_url else _portable(Path(location.removeprefix("file://")))
    block = NamedRunConfig(
        source=source,
        base_dir=None if link or base_dir is None else _portable(base_dir),
        config=None if link else data,
    )
    block.save(name, overwrite=True)
    return get_named_config(name), config


def remove_named_config(name: str) -> None:
    record = get_named_config(name)
    with _client() as client:
        client.delete_block_document(record.id)


# --------------------------------------------------------------------------- overrides


def _member_types(annotation: Any) -> list:
    """The types a field may hold, with Annotated, Optional and unions unwrapped."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _member_types(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [t for arg in get_args(annotation) for t in _member_types(arg)]
    return [annotation]


def check_override_path(path: str) -> None:
    """Fail unless `path` (dotted, list items by index) names a field of the config model."""
    candidates: list = [RunConfig]
    walked: list[str] = []
    for part in path.split("."):
        found: list = []
        fields: list[str] = []
        for kind in candidates:
            origin = get_origin(kind)
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                fields += list(kind.model_fields)
                if part in kind.model_fields:
                    found += _member_types(kind.model_fields[part].annotation)
            elif kind is Any or kind is dict or origin is dict:
                return  # a free-form mapping (e.g. store.storage_options): any key below it
            elif origin in (list, tuple) and part.isdigit():
                found += [t for arg in get_args(kind) if arg is not Ellipsis for t in _member_types(arg)]
        if not found:
            where = ".".join(walked) or "the config"
            known = f"; its fields: {', '.join(dict.fromkeys(fields))}" if fields else ""
            raise ConfigError(f"overrides: {path!r} is not a field of the config ({where} has no {part!r}{known})")
        candidates = found
        walked.append(part)


def apply_overrides(data: dict, overrides: dict[str, Any]) -> dict:
    """A copy of the config mapping with each dotted field set; every path is checked first."""
    if not isinstance(overrides, dict):
        raise ConfigError(f"overrides must map dotted field paths to values, got {overrides!r}")
    for path in overrides:
        check_override_path(path)
    data = copy.deepcopy(data)
    for path, value in overrides.items():
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"overrides: {path!r}: the config's list has no item {part}")
                node = node[int(part)]
            else:
                if not isinstance(node.get(part), dict | list):
                    node[part] = {}
                node = node[part]
        if isinstance(node, list):
            if int(last) >= len(node):
                raise ConfigError(f"overrides: {path!r}: the config's list has no item {last}")
            node[int(last)] = value
        else:
            node[last] = value
    return data


# --------------------------------------------------------------------------- a run's config


@dataclass(frozen=True)
class ResolvedConfig:
    """The config a run works with, and what the run changed in it."""

    config: RunConfig
    source: ConfigSource
    years: list[int] | None = None  # the run's own years, when it gave some
    overrides: dict[str, Any] = field(default_factory=dict)


def run_years(years: Any, today=None) -> list[int]:
    """The years a run asks for (plain or relative), checked as the config checks its own."""
    try:
        resolved = resolve_years(years, today)
    except ValueError as exc:
        raise ConfigError(f"years: {exc}") from None
    if not isinstance(resolved, list) or not resolved:
        raise ConfigError(f"years: give a list of years, e.g. [2024] or [previous], got {years!r}")
    plain = []
    for year in resolved:
        if isinstance(year, str) and year.strip().isdigit():
            year = int(year)
        if isinstance(year, bool) or not isinstance(year, int):
            raise ConfigError(f"years: {year!r} is not a year")
        plain.append(year)
    bad = [y for y in plain if not 2015 <= y <= 2100]
    if bad:
        raise ConfigError(f"years: {bad} are outside Sentinel-2's era (2015 onwards)")
    if len(set(plain)) != len(plain):
        raise ConfigError(f"years: {plain} repeat a year")
    return sorted(plain)


def _inline_error(exc: ValidationError, changes: dict) -> ConfigError:
    # Field paths as the flow's parameter: config.years, config.grid.tile_size_m.
    source = "(the flow's `config` parameter" + (f" with {', '.join(changes)} changed)" if changes else ")")
    return ConfigError(format_validation_error(exc, source).replace("\n  - ", "\n  - config."))


def resolve_config(
    config: str | dict | RunConfig,
    *,
    years: Any = None,
    overrides: dict[str, Any] | None = None,
    today=None,
) -> ResolvedConfig:
    """The RunConfig a run's `config`, `years` and `overrides` parameters stand for; ConfigError if none.

    The run's years replace the config's (`years` is an override of that field, resolved first when
    relative), so the config model checks the result as a whole: e.g. merge.years must be among them.
    """
    overrides = dict(overrides or {})
    run_own = None if years is None or years == [] else run_years(years, today)
    changes = {**overrides, **({"years": run_own} if run_own is not None else {})}
    if isinstance(config, RunConfig):
        source = ConfigSource("inline", "<inline>", config.name)
        if not changes or (not overrides and run_own == list(config.years)):
            return ResolvedConfig(config, source, run_own, overrides)  # as the country run hands it on
        data, base_dir, where = config.model_dump(mode="json"), None, None
    elif isinstance(config, dict):
        source = ConfigSource("inline", "<inline>", str(config.get("name") or "config"))
        data, base_dir, where = config, None, None
    elif isinstance(config, str) and config.strip():
        ref = config.strip()
        kind = reference_kind(ref)
        if kind == "named":
            record = get_named_config(ref)
            data, base_dir = record.data()
            source = ConfigSource("named", ref, ref, record.link, record.source)
            where = f"named config {ref!r} (from {record.source})"
        else:
            data, base_dir = read_location(ref)
            label = Path(ref.split("://", 1)[-1]).stem
            link = ref if kind == "url" else Path(ref).resolve().as_uri()
            source = ConfigSource(kind, ref, label, link)
            where = ref
    else:
        raise ConfigError(
            "config must be a named config (`lcms configs list`), a file path or URL, or a whole config; "
            f"got {config!r}"
        )
    data = apply_overrides(data, changes)
    if where is None:  # typed in the form: name its fields as the form's (config.years)
        try:
            return ResolvedConfig(RunConfig.model_validate(data), source, run_own, overrides)
        except ValidationError as exc:
            raise _inline_error(exc, changes) from None
    if changes:
        where += " with " + ", ".join(f"{k} = {v!r}" for k, v in changes.items())
    return ResolvedConfig(parse_config(data, source=where, base_dir=base_dir), source, run_own, overrides)


def resolve_subset(subset: TileSubset | dict | None) -> TileSubset:
    if subset is None:
        return TileSubset()
    if isinstance(subset, TileSubset):
        return subset
    try:
        return TileSubset.model_validate(subset)
    except ValidationError as exc:
        text = format_validation_error(exc, "(the flow's `subset` parameter)")
        raise ConfigError(
            text.replace("\n  - ", "\n  - subset.").replace("Invalid config", "Invalid tile subset")
        ) from None


def load_reference(ref: str) -> RunConfig:
    """A config by name, path or URL (what `lcms COMMAND NAME` runs)."""
    return resolve_config(ref).config
