"""The registry: immutable content-addressed versions, references, stable pointer, history."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from policy_canary.canonical import digest
from policy_canary.clock import ManualClock
from policy_canary.errors import (
    AmbiguousReferenceError,
    ConflictError,
    InvalidNameError,
    InvalidSpecError,
    NotFoundError,
)
from policy_canary.registry import Registry, ReleaseKind, split_ref
from policy_canary.store import Store
from policy_canary.store.schema import audit, release_history, versions

SPEC_V1 = {"prompt": "You are helpful.", "tools": ["search"], "model": "small"}
SPEC_V2 = {"prompt": "You are concise.", "tools": ["search"], "model": "small", "memory": {}}


@pytest.fixture
def registry(store: Store, clock: ManualClock) -> Registry:
    return Registry(store, clock=clock)


def _count(store: Store, table: object) -> int:
    with store.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def test_version_id_is_sha256_of_canonical_json(registry: Registry) -> None:
    result = registry.register("support-agent", SPEC_V1, message="first", author="ana")
    assert result.created
    assert result.version.id == digest(SPEC_V1)
    assert result.version.number == 1
    assert result.version.parent_id is None
    assert result.version.author == "ana"
    assert result.version.spec == SPEC_V1


def test_first_version_becomes_stable_by_bootstrap(registry: Registry) -> None:
    v1 = registry.register("support-agent", SPEC_V1).version
    assert registry.stable("support-agent") == v1
    [entry] = registry.history("support-agent")
    assert (entry.kind, entry.from_id, entry.to_id) == (ReleaseKind.BOOTSTRAP, None, v1.id)


def test_bootstrap_can_be_declined(registry: Registry) -> None:
    result = registry.register("agent", SPEC_V1, bootstrap=False)
    assert not result.became_stable
    assert registry.stable("agent") is None
    assert registry.history("agent") == []


def test_identical_content_is_idempotent_and_any_change_is_a_new_version(
    registry: Registry, store: Store
) -> None:
    first = registry.register("agent", SPEC_V1).version
    reordered = dict(reversed(list(SPEC_V1.items())))
    again = registry.register("agent", reordered)
    assert not again.created
    assert again.version == first
    second = registry.register("agent", SPEC_V2, message="concise").version
    assert second.id != first.id
    assert (second.number, second.parent_id) == (2, first.id)
    assert _count(store, versions) == 2


def test_stable_moves_only_with_a_history_entry(registry: Registry, store: Store) -> None:
    registry.register("agent", SPEC_V1)
    v2 = registry.register("agent", SPEC_V2).version
    assert registry.stable("agent").number == 1  # type: ignore[union-attr]
    entry = registry.set_stable("agent", "v2", reason="hotfix", actor="ops")
    assert entry is not None
    assert (entry.kind, entry.to_id, entry.actor) == (ReleaseKind.MANUAL, v2.id, "ops")
    assert registry.stable("agent") == v2
    assert [e.kind for e in registry.history("agent")] == [
        ReleaseKind.BOOTSTRAP,
        ReleaseKind.MANUAL,
    ]
    # Moving to the current stable writes nothing.
    before = _count(store, release_history)
    assert registry.set_stable("agent", "v2", reason="again") is None
    assert _count(store, release_history) == before


def test_set_stable_needs_a_reason(registry: Registry) -> None:
    registry.register("agent", SPEC_V1)
    with pytest.raises(InvalidSpecError, match="reason"):
        registry.set_stable("agent", "v1", reason="  ")


def test_every_write_is_audited(registry: Registry, store: Store) -> None:
    registry.register("agent", SPEC_V1, author="ana")
    registry.register("agent", SPEC_V2, author="bo")
    registry.set_stable("agent", "v2", reason="better", actor="cy")
    with store.read() as conn:
        rows = conn.execute(select(audit.c.actor, audit.c.action).order_by(audit.c.id)).all()
    assert [tuple(r) for r in rows] == [
        ("ana", "version.register"),
        ("ana", "stable.bootstrap"),
        ("bo", "version.register"),
        ("cy", "stable.manual"),
    ]


def test_references_resolve(registry: Registry) -> None:
    v1 = registry.register("agent", SPEC_V1).version
    v2 = registry.register("agent", SPEC_V2).version
    assert registry.resolve("agent", v2.id) == v2
    assert registry.resolve("agent", v1.id[:6]) == v1
    assert registry.resolve("agent", v1.id[:10].upper()) == v1
    assert registry.resolve("agent", "v2") == v2
    assert registry.resolve("agent", "stable") == v1
    assert registry.resolve("agent", "latest") == v2


def test_unknown_reference_lists_what_exists(registry: Registry) -> None:
    registry.register("agent", SPEC_V1)
    registry.register("agent", SPEC_V2)
    with pytest.raises(NotFoundError, match=r"no version 'v9' of policy 'agent'; it has v1..v2"):
        registry.resolve("agent", "v9")
    with pytest.raises(NotFoundError, match="has id 'ffffff'"):
        registry.resolve("agent", "ffffff")
    with pytest.raises(NotFoundError, match="at least 6 hex"):
        registry.resolve("agent", "abc")
    with pytest.raises(NotFoundError, match=r"no policy named 'nope' \(policies: agent\)"):
        registry.resolve("nope", "v1")


def test_ambiguous_prefix_lists_the_candidates(registry: Registry) -> None:
    # Find two specs whose ids share a 6-character prefix (birthday search over a small space).
    seen: dict[str, int] = {}
    pair = None
    for i in range(200_000):
        prefix = digest({"n": i})[:6]
        if prefix in seen:
            pair = (seen[prefix], i)
            break
        seen[prefix] = i
    assert pair is not None
    a = registry.register("agent", {"n": pair[0]}).version
    registry.register("agent", {"n": pair[1]})
    with pytest.raises(AmbiguousReferenceError, match="matches several versions"):
        registry.resolve("agent", a.id[:6])


@pytest.mark.parametrize("name", ["", "Upper", "-lead", "has space", "x" * 65, "ünï"])
def test_invalid_names_are_refused_and_nothing_is_stored(
    registry: Registry, store: Store, name: str
) -> None:
    with pytest.raises(InvalidNameError, match="invalid policy name"):
        registry.register(name, SPEC_V1)
    assert _count(store, versions) == 0


def test_oversized_spec_is_refused_and_nothing_is_stored(store: Store) -> None:
    registry = Registry(store, max_spec_bytes=1024)
    with pytest.raises(InvalidSpecError, match="limit is 1,024 bytes"):
        registry.register("agent", {"prompt": "x" * 2000})
    assert _count(store, versions) == 0


def test_nan_spec_is_refused_and_nothing_is_stored(registry: Registry, store: Store) -> None:
    with pytest.raises(InvalidSpecError, match="NaN"):
        registry.register("agent", {"temperature": float("nan")})
    assert _count(store, versions) == 0


def test_diff_shows_unified_text_and_sections(registry: Registry) -> None:
    registry.register("agent", SPEC_V1)
    registry.register("agent", SPEC_V2)
    diff = registry.diff("agent", "v1", "v2")
    assert diff.changed == ("prompt",)
    assert diff.added == ("memory",)
    assert diff.removed == ()
    assert diff.summary == "v1 → v2: changed: prompt; added: memory"
    assert '-  "prompt": "You are helpful.",' in diff.unified
    assert '+  "prompt": "You are concise.",' in diff.unified
    assert registry.diff("agent", "v1", "v1").summary == "v1 and v1 are identical"


def test_export_then_import_into_another_store_reproduces_the_id(
    registry: Registry, tmp_path: Path
) -> None:
    registry.register("agent", SPEC_V1)
    original = registry.register("agent", {"x": 1.5, "y": [1, 2.0]}, message="m").version
    path = tmp_path / "v2.json"
    registry.export_to_file("agent", "v2", path)
    other = Registry(Store.open(f"sqlite:///{tmp_path}/other.db"))
    result = other.import_file(path)
    assert result.version.id == original.id
    assert result.version.canonical == original.canonical
    assert result.version.message == "m"
    assert other.import_file(path).created is False


def test_import_refuses_a_tampered_file(registry: Registry, tmp_path: Path) -> None:
    registry.register("agent", SPEC_V1)
    path = tmp_path / "v1.json"
    registry.export_to_file("agent", "v1", path)
    document = json.loads(path.read_text())
    document["spec"]["prompt"] = "evil"
    path.write_text(json.dumps(document))
    other = Registry(Store.open(f"sqlite:///{tmp_path}/other.db"))
    with pytest.raises(InvalidSpecError, match="digest mismatch"):
        other.import_file(path)
    assert other.policies() == []


def test_split_ref() -> None:
    assert split_ref("agent") == ("agent", "stable")
    assert split_ref("agent@v3") == ("agent", "v3")
    with pytest.raises(NotFoundError, match="nothing after"):
        split_ref("agent@")


def test_policies_lists_stable_and_latest(registry: Registry) -> None:
    registry.register("b-agent", SPEC_V1)
    registry.register("a-agent", SPEC_V1)
    registry.register("a-agent", SPEC_V2)
    summaries = registry.policies()
    assert [s.name for s in summaries] == ["a-agent", "b-agent"]
    assert summaries[0].stable is not None
    assert (summaries[0].stable.number, summaries[0].latest.number) == (1, 2)


def test_concurrent_registration_assigns_distinct_numbers(store: Store) -> None:
    import threading

    registry = Registry(store)
    errors: list[BaseException] = []

    def push(i: int) -> None:
        try:
            registry.register("agent", {"n": i})
        except BaseException as exc:  # collect, the main thread asserts
            errors.append(exc)

    threads = [threading.Thread(target=push, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(v.number for v in registry.versions("agent")) == list(range(1, 9))
    assert ConflictError  # imported for the retry path's error type


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("author", 5, r"'author' must be a string, not 5 \(int\)"),
        ("message", ["a"], r"'message' must be a string, not \['a'\] \(list\)"),
        ("created_at", "yesterday", r"'created_at' must be an ISO 8601 time with a UTC offset"),
        ("created_at", "2026-01-01T00:00:00", r"'created_at' must be an ISO 8601 time"),
        ("number", "99", r"'number' must be a whole number from 1 to 2,147,483,647"),
        ("number", 0, r"'number' must be a whole number"),
        ("number", 2**31, r"'number' must be a whole number"),
        ("parent_id", "abc", r"'parent_id' must be a version id"),
        ("policy", 7, r"'policy' must be a string"),
        ("extra", 1, r"unknown field\(s\) 'extra'; an export has format, policy"),
    ],
)
def test_import_refuses_fields_of_the_wrong_type_instead_of_coercing(
    registry: Registry, tmp_path: Path, field: str, value: object, message: str
) -> None:
    registry.register("agent", SPEC_V1)
    document = registry.export_version("agent", "v1")
    document[field] = value
    other = Registry(Store.open(f"sqlite:///{tmp_path}/other.db"))
    with pytest.raises(InvalidSpecError, match=message):
        other.import_version(document, source="v1.json")
    assert other.policies() == []


def test_import_numbers_the_version_anew_and_keeps_author_and_message(
    registry: Registry, tmp_path: Path
) -> None:
    registry.register("agent", SPEC_V1, author="alice", message="first")
    document = registry.export_version("agent", "v1")
    document["number"] = 99
    other = Registry(Store.open(f"sqlite:///{tmp_path}/other.db"))
    imported = other.import_version(document).version
    assert (imported.number, imported.author, imported.message) == (1, "alice", "first")
