"""Backward compatibility: the current schemas must read data written by every older version.

Old versions come from (a) ``schemas/history``, (b) ``schemas/`` at git HEAD when the working tree
differs, (c) the previous distinct committed version in ``git log -- schemas``. Since a top-level
record's meaning depends on every file it references, git versions are rebuilt from the whole
``schemas/`` directory of a commit, not from the one file.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from streams.serde.catalog import SCHEMA_DIR, SchemaCatalog, SchemaCatalogError, resolution_form
from streams.serde.compat import backward_problems, roundtrip_problems, structural_problems

CATALOG = SchemaCatalog.load()
RECORDS = CATALOG.top_level
MAX_COMMITS = 200


# -- git plumbing (every failure means "no history available", never a test error) ----------------


def _run_git(cwd: Path, *args: str, stdin: bytes | None = None) -> bytes | None:
    if shutil.which("git") is None:
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(cwd), *args], input=stdin, capture_output=True, check=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout


class GitSchemas:
    """Committed versions of the top-level records of a ``schemas/`` directory."""

    def __init__(self, schema_dir: Path, records: tuple[str, ...]) -> None:
        self.records = records
        top = _run_git(schema_dir, "rev-parse", "--show-toplevel")
        self.top: Path | None = None if top is None else Path(top.decode().strip())
        self.prefix: str | None = None
        if self.top is not None:
            try:
                self.prefix = schema_dir.resolve().relative_to(self.top.resolve()).as_posix()
            except ValueError:
                self.top = None
        self._catalogs: dict[str, SchemaCatalog | None] = {}

    def git(self, *args: str, stdin: bytes | None = None) -> bytes | None:
        return None if self.top is None else _run_git(self.top, *args, stdin=stdin)

    def catalog_at(self, commit: str) -> SchemaCatalog | None:
        if commit not in self._catalogs:
            self._catalogs[commit] = self._load(commit)
        return self._catalogs[commit]

    def _load(self, commit: str) -> SchemaCatalog | None:
        listing = self.git("ls-tree", "--name-only", commit, f"{self.prefix}/")
        if listing is None:
            return None
        paths = [p for p in listing.decode().splitlines() if p.endswith(".avsc")]
        if not paths:
            return None
        batch = self.git("cat-file", "--batch", stdin="".join(f"{commit}:{p}\n" for p in paths).encode())
        if batch is None:
            return None
        sources: dict[str, str] = {}
        pos = 0
        for path in paths:
            header_end = batch.index(b"\n", pos)
            size = int(batch[pos:header_end].split()[2])
            sources[Path(path).name] = batch[header_end + 1 : header_end + 1 + size].decode("utf-8")
            pos = header_end + 1 + size + 1
        present = [name for name in self.records if f"{name}.avsc" in sources]
        try:
            return SchemaCatalog.from_sources(sources, top_level=present)
        except SchemaCatalogError:
            return None  # a broken commit cannot have produced data

    def schema_at(self, commit: str, record: str) -> Any | None:
        cat = self.catalog_at(commit)
        if cat is None or record not in cat.top_level:
            return None
        return cat.current(record).schema

    def commits(self) -> list[str]:
        """Commits that touched ``schemas/``, newest first."""
        out = self.git("log", f"-n{MAX_COMMITS}", "--format=%H", "--", str(self.prefix))
        return [] if out is None else out.decode().split()

    def previous_distinct(self, record: str) -> tuple[str, Any] | None:
        """(commit, schema) of the newest committed version that differs from the latest one."""
        latest: str | None = None
        for commit in self.commits():
            schema = self.schema_at(commit, record)
            if schema is None:
                continue
            form = resolution_form(schema)
            if latest is None:
                latest = form
            elif form != latest:
                return commit, schema
        return None


GIT = GitSchemas(SCHEMA_DIR, RECORDS)


def _assert_reads(old: Any, record: str, what: str) -> None:
    problems = backward_problems(old, CATALOG.current(record).schema, samples=200, seed=hash(what) & 0xFFFF)
    assert problems == [], f"{record}: the current schema cannot read data written by {what}:\n" + "\n".join(
        problems
    )


# -- (a) released history ----------------------------------------------------------------------------


@pytest.mark.parametrize("record", RECORDS)
def test_current_reads_every_released_version(record: str) -> None:
    history = CATALOG.history(record)
    assert history, f"{record} has no released version"
    for version in history:
        _assert_reads(version.schema, record, f"schemas/history/{record}/{version.version}.avsc")


# -- (b) git HEAD versus the working tree --------------------------------------------------------------


@pytest.mark.parametrize("record", RECORDS)
def test_current_reads_the_head_version(record: str) -> None:
    if GIT.catalog_at("HEAD") is None:
        pytest.skip("git or a committed schemas/ is not available")
    head = GIT.schema_at("HEAD", record)
    if head is None:
        pytest.skip(f"{record} is not committed yet")
    if resolution_form(head) == resolution_form(CATALOG.current(record).schema):
        return  # unchanged (beyond docs) since HEAD
    _assert_reads(head, record, "git HEAD")


# -- (c) the previous distinct committed version ---------------------------------------------------


@pytest.mark.parametrize("record", RECORDS)
def test_current_reads_the_previous_committed_version(record: str) -> None:
    if not GIT.commits():
        pytest.skip("git is not available or schemas/ has no history")
    found = GIT.previous_distinct(record)
    if found is None:
        pytest.skip(f"{record} has a single committed version")
    commit, schema = found
    _assert_reads(schema, record, f"git commit {commit[:12]}")


def test_git_reconstruction_matches_the_working_tree_when_clean() -> None:
    """HEAD rebuilt from git equals the files when they are unchanged."""
    head = GIT.catalog_at("HEAD")
    if head is None:
        pytest.skip("git or a committed schemas/ is not available")
    status = GIT.git("status", "--porcelain", "--", str(GIT.prefix))
    if status is None or status.strip():
        pytest.skip("schemas/ has uncommitted changes")
    for record in head.top_level:
        assert head.current(record).canonical == CATALOG.current(record).canonical


def test_git_versions_in_a_scratch_repository(tmp_path: Path) -> None:
    """The git paths (b) and (c) find the right versions: two commits plus a dirty working tree."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    for path in SCHEMA_DIR.glob("*.avsc"):
        shutil.copy(path, schemas / path.name)
    trade_file = schemas / "xchg.v1.Trade.avsc"

    def add_field(name: str, type_: Any) -> None:
        schema = json.loads(trade_file.read_text())
        schema["fields"].append({"name": name, "type": type_, "default": None, "doc": "test"})
        trade_file.write_text(json.dumps(schema))

    def commit(message: str) -> None:
        assert _run_git(tmp_path, "add", "schemas") is not None
        ident = ["-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "commit.gpgsign=false"]
        assert _run_git(tmp_path, *ident, "commit", "-q", "-m", message) is not None

    assert _run_git(tmp_path, "init", "-q") is not None
    commit("v1")
    add_field("fee", ["null", "long"])
    commit("v2: optional fee")
    add_field("venue", ["null", "string"])  # uncommitted

    repo = GitSchemas(schemas, ("xchg.v1.Trade", "xchg.v1.OrderEvent"))
    working = SchemaCatalog.load(schemas, top_level=["xchg.v1.Trade"]).current("xchg.v1.Trade").schema
    head = repo.schema_at("HEAD", "xchg.v1.Trade")
    assert head is not None
    assert [f["name"] for f in head["fields"]][-1] == "fee"
    found = repo.previous_distinct("xchg.v1.Trade")
    assert found is not None
    assert [f["name"] for f in found[1]["fields"]][-1] == "input_offset"  # v1, before fee
    assert backward_problems(head, working) == []
    assert backward_problems(found[1], working) == []
    assert repo.previous_distinct("xchg.v1.OrderEvent") is None  # unchanged across both commits

    # An incompatible working-tree edit is caught against HEAD.
    schema = json.loads(trade_file.read_text())
    next(f for f in schema["fields"] if f["name"] == "price")["type"] = "string"
    trade_file.write_text(json.dumps(schema))
    broken = SchemaCatalog.load(schemas, top_level=["xchg.v1.Trade"]).current("xchg.v1.Trade").schema
    assert backward_problems(head, broken)


# -- the checker catches incompatible changes (in memory) --------------------------------------------


def _current(record: str) -> Any:
    return copy.deepcopy(CATALOG.current(record).schema)


def _field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in schema["fields"] if f["name"] == name)


def _place_order(command: dict[str, Any]) -> dict[str, Any]:
    branch: dict[str, Any] = _field(command, "body")["type"][0]
    assert branch["name"] == "PlaceOrder"
    return branch


def test_checker_rejects_a_new_field_without_default() -> None:
    old, new = _current("xchg.v1.OrderCommand"), _current("xchg.v1.OrderCommand")
    _place_order(new)["fields"].append({"name": "client_tag", "type": "string", "doc": "x"})
    structural = structural_problems(old, new)
    assert structural == ["xchg.v1.OrderCommand.body|0.client_tag: field added without a default"]
    assert roundtrip_problems(old, new), "random PlaceOrder values must fail to read"


def test_checker_rejects_a_type_change() -> None:
    old, new = _current("xchg.v1.Trade"), _current("xchg.v1.Trade")
    _field(new, "price")["type"] = "string"
    assert any("price" in p for p in structural_problems(old, new))
    assert roundtrip_problems(old, new)
    narrowed = _current("xchg.v1.Trade")
    _field(narrowed, "qty")["type"] = "int"  # long -> int is no promotion
    assert backward_problems(old, narrowed)


def test_checker_rejects_lost_enum_symbol_union_branch_and_fixed_size() -> None:
    old = _current("xchg.v1.OrderEvent")
    lost_branch = _current("xchg.v1.OrderEvent")
    body = _field(lost_branch, "body")
    # Drop MarketStateChanged; keep every named type still defined.
    body["type"] = [b for b in body["type"] if b["name"] != "MarketStateChanged"]
    assert any("no branch" in p for p in structural_problems(old, lost_branch))

    old_status, status = _current("xchg.v1.SettlementStatus"), _current("xchg.v1.SettlementStatus")
    _field(status, "state")["type"]["symbols"].remove("ALERT")
    assert any("lost symbols ['ALERT']" in p for p in structural_problems(old_status, status))
    sized = _current("xchg.v1.SettlementStatus")
    _field(sized, "tx_hash")["type"][1]["size"] = 20
    assert any("size 32 -> 20" in p for p in structural_problems(old_status, sized))

    old_batch, renamed = _current("xchg.v1.SettlementBatch"), _current("xchg.v1.SettlementBatch")
    renamed["name"] = "Batch"
    assert structural_problems(old_batch, renamed)
    renamed["aliases"] = ["SettlementBatch"]
    assert structural_problems(old_batch, renamed) == []


def test_checker_accepts_compatible_changes() -> None:
    old = _current("xchg.v1.SettlementStatus")
    new = _current("xchg.v1.SettlementStatus")
    new["fields"].append({"name": "chain_id", "type": ["null", "long"], "default": None, "doc": "x"})
    new["fields"] = [f for f in new["fields"] if f["name"] != "reason"]  # readers may drop fields
    _field(new, "state")["type"]["symbols"].append("CANCELLED")  # readers may learn symbols
    _field(new, "bumps")["type"] = "long"  # int -> long promotion
    assert backward_problems(old, new) == []

    old_cmd, new_cmd = _current("xchg.v1.OrderCommand"), _current("xchg.v1.OrderCommand")
    _field(new_cmd, "body")["type"].append(
        {"type": "record", "name": "Ping", "namespace": "xchg.v1", "fields": [], "doc": "x"}
    )
    _field(_place_order(new_cmd), "price")["type"] = ["null", "long"]  # long -> union containing long
    _field(_place_order(new_cmd), "price")["default"] = None
    assert backward_problems(old_cmd, new_cmd) == []
