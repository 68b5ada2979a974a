"""The store: replay after restart, data-dir identity and lock, readers never see half an edit."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from services.bank.datadir import DataDirLocked, DataDirUnusable
from services.bank.store import BankStore
from shared.bankmath import snippets_from_coefficients
from shared.errors import IncompatibleArtifacts
from tests.support.banks import N0, SyntheticBank, make_bank


def open_store(bank: SyntheticBank, data_dir: Path) -> BankStore:
    store = BankStore.open(bank.path, data_dir)
    store.index.start_build().join()
    return store


def test_restart_replays_everything_exactly(bank: SyntheticBank, tmp_path: Path) -> None:
    store = open_store(bank, tmp_path / "d")
    rng = np.random.default_rng(3)
    ids = [store.insert(rng.normal(size=bank.snippets.shape[1]), name=f"s{k}")[0] for k in range(5)]
    mid, _ = store.interpolate(ids[0], 7, 0.3, "slerp", "m")
    store.delete(ids[1])
    before = store.view()
    coeffs = {i: store.record(before, i).coefficients.copy() for i in (*ids[:1], *ids[2:], mid)}
    store.close()

    again = open_store(bank, tmp_path / "d")
    view = again.view()
    assert view.version == before.version == 7
    assert view.user_ids.tolist() == before.user_ids.tolist()
    for i, c in coeffs.items():
        rec = again.record(view, i)
        assert rec.coefficients.tobytes() == c.tobytes()
    rec = again.record(view, mid)
    assert (rec.kind, rec.parents, rec.alpha, rec.method, rec.name) == (
        "interpolated",
        (ids[0], 7),
        0.3,
        "slerp",
        "m",
    )
    assert not view.is_live(ids[1])
    assert again.events_since(0)[-2:] == [(6, "interpolate", mid), (7, "delete", ids[1])]
    new_id, version, _ = again.insert(np.ones(bank.snippets.shape[1]))
    assert (new_id, version) == (mid + 1, 8)  # ids never reused, even the deleted one
    hits = again.search(again.record(view, mid).coefficients, 3, "all")[1]
    assert hits[0][0] == mid
    again.close()


def test_other_factors_file_is_refused(bank: SyntheticBank, tmp_path: Path) -> None:
    store = open_store(bank, tmp_path / "d")
    store.close()
    other = make_bank(tmp_path / "other.safetensors", seed=9)
    with pytest.raises(IncompatibleArtifacts) as info:
        BankStore.open(other.path, tmp_path / "d")
    assert str(bank.path.resolve()) in str(info.value) and "other.safetensors" in str(info.value)
    BankStore.open(bank.path, tmp_path / "d").close()  # the original still opens


def test_one_process_per_data_dir(bank: SyntheticBank, tmp_path: Path) -> None:
    store = open_store(bank, tmp_path / "d")
    with pytest.raises(DataDirLocked, match="in use"):
        BankStore.open(bank.path, tmp_path / "d")
    store.close()
    BankStore.open(bank.path, tmp_path / "d").close()


def test_a_data_dir_that_cannot_be_a_directory_is_a_clear_error(bank: SyntheticBank, tmp_path: Path) -> None:
    # Regression: a file at --data-dir crashed the service start with a FileExistsError traceback.
    in_the_way = tmp_path / "afile"
    in_the_way.write_text("")
    with pytest.raises(DataDirUnusable, match="must be a directory"):
        BankStore.open(bank.path, in_the_way)


def test_cli_reports_an_unusable_data_dir_without_a_traceback(bank: SyntheticBank, tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from services.bank.__main__ import serve

    (tmp_path / "afile").write_text("")
    cli = typer.Typer()
    cli.command()(serve)
    result = CliRunner().invoke(cli, ["--factors", str(bank.path), "--data-dir", str(tmp_path / "afile")])
    assert result.exit_code == 2 and "cannot use data dir" in result.output
    assert not isinstance(result.exception, OSError)


def test_readers_see_whole_versions_while_a_writer_appends(bank: SyntheticBank, tmp_path: Path) -> None:
    """Each insert adds one user snippet, each delete removes one: in every view the user pool size equals
    inserts - deletes at that version, and every id in it retrieves the snippet stored for it."""
    store = open_store(bank, tmp_path / "d")
    d = bank.snippets.shape[1]
    stop = threading.Event()
    problems: list[str] = []
    seen_versions: list[int] = []
    expected_pool: dict[int, int] = {0: 0}

    def writer() -> None:
        rng = np.random.default_rng(5)
        live: list[int] = []
        for _ in range(120):
            if live and rng.random() < 0.3:
                store.delete(live.pop(int(rng.integers(len(live)))))
            else:
                live.append(store.insert(rng.normal(size=d))[0])
            expected_pool[store.view().version] = len(live)
        stop.set()

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        last = -1
        while not stop.is_set():
            view, ids, snippets = store.retrieve_by_noise([rng.normal(size=16)], "all")
            if view.version < last:
                problems.append(f"version went back {last} -> {view.version}")
            last = view.version
            seen_versions.append(view.version)
            if view.pool_size("user") != view.user_ids.shape[0]:
                problems.append("pool size and ids disagree")
            if view.user_ids.size:
                u = view.user_ids
                got = store.snippets(view, u)
                want = snippets_from_coefficients(
                    np.stack([view.records[i - N0].coefficients for i in u]), bank.B, bank.mu
                )
                if not np.allclose(got, want, atol=1e-6):
                    problems.append("snippets changed under a view")
                if [view.records[i - N0].id for i in u] != u.tolist():
                    problems.append("record table out of step with the view")
            if not (ids < N0 + view.n_runtime).all():
                problems.append("retrieved an id the view does not hold")
            pool_sizes.append((view.version, view.pool_size("user")))

    pool_sizes: list[tuple[int, int]] = []
    threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)] + [
        threading.Thread(target=writer)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    store.close()
    assert not problems, problems[:5]
    assert len(set(seen_versions)) > 5  # the readers really overlapped the writer
    mismatched = [(v, n) for v, n in pool_sizes if v in expected_pool and expected_pool[v] != n]
    assert not mismatched, mismatched[:5]
    assert sorted(expected_pool) == list(range(121))
