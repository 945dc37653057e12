"""Lineage chains over synthetic runs: several generations, a parent in another runs folder, a
removed parent, and a loop in hand-edited run.json files."""

from __future__ import annotations

from fake_runs import make_run

from peftkit.tracking.catalog import Catalog
from peftkit.tracking.lineage import chain, children


def parent_info(folder, run_id):
    return {"parent": run_id, "parent_path": str(folder / run_id)}


def test_chain_follows_parents_across_runs_folders(tmp_path):
    here, elsewhere = tmp_path / "runs", tmp_path / "old-runs"
    make_run(elsewhere, "g0")
    make_run(here, "g1", info=parent_info(elsewhere, "g0"))
    make_run(here, "g2", info=parent_info(here, "g1"))
    make_run(here, "g3", info=parent_info(here, "g2"))
    with Catalog(str(here)) as catalog:
        found = chain(catalog, catalog.resolve("g3"))
        assert [r.id for r in found] == ["g3", "g2", "g1", "g0"]
        assert [r.id for r in children(catalog.all(), catalog.resolve("g1"))] == ["g2"]


def test_a_missing_parent_ends_the_chain_with_its_name(tmp_path):
    here = tmp_path / "runs"
    make_run(here, "child", info=parent_info(here, "gone"))
    with Catalog(str(here)) as catalog:
        found = chain(catalog, catalog.resolve("child"))
    assert [getattr(r, "id", r) for r in found] == ["child", "gone"]


def test_a_loop_of_parents_stops(tmp_path):
    here = tmp_path / "runs"
    make_run(here, "a", info=parent_info(here, "b"))
    make_run(here, "b", info=parent_info(here, "a"))
    with Catalog(str(here)) as catalog:
        found = chain(catalog, catalog.resolve("a"))
    assert [getattr(r, "id", r) for r in found] == ["a", "b", "a"]  # the repeated name shows where it loops
