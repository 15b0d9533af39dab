"""The tag that marks a node's overlay pieces (ADR 23): readable, and always a valid nft comment."""

from __future__ import annotations

from pathlib import Path

from warren.network import lb, owner


def test_a_tag_names_the_data_directory_by_its_absolute_path(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    assert owner.tag(Path("node-a")) == f"warren:{tmp_path}/node-a"
    assert owner.describe(owner.tag(Path("node-a"))) == f"the Warren node in {tmp_path}/node-a"


def test_a_path_that_cannot_be_a_comment_is_tagged_by_its_digest() -> None:
    for path in (Path('/srv/a"b'), Path("/srv/" + "x" * 200), Path("/srv/a\nb")):
        tag = owner.tag(path)
        assert tag.startswith("warren:sha256:") and len(tag) < 60
        assert lb.ruleset([], owner=tag)  # accepted as the table's comment
        assert "digest" in owner.describe(tag)
    assert owner.tag(Path("/srv/a b")) != owner.tag(Path("/srv/a c"))
