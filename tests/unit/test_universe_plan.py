from __future__ import annotations

from actors.universe import plan_chunks


def syms(n: int, prefix: str = "S") -> set[str]:
    return {f"{prefix}{i:04d}_USDT" for i in range(n)}


def test_450_symbols_make_three_chunks_of_at_most_200() -> None:
    plan = plan_chunks({}, syms(450), 200)
    assert sorted(len(s) for s in plan.values()) == [50, 200, 200]
    assert set().union(*plan.values()) == syms(450)


def test_refresh_moves_nothing_that_stays() -> None:
    first = plan_chunks({}, syms(450), 200)
    wanted = (syms(450) - {"S0000_USDT", "S0300_USDT"}) | {"NEW_USDT"}
    second = plan_chunks(first, wanted, 200)
    for cid, symbols in first.items():
        assert (symbols & wanted) <= second[cid]
    assert set().union(*second.values()) == wanted
    assert sum(len(s) for s in second.values()) == len(wanted)
    assert len(second) == 3


def test_emptied_chunk_is_kept_empty_to_be_retired() -> None:
    first = plan_chunks({}, syms(250), 200)
    survivors = set(sorted(syms(250))[:200])
    second = plan_chunks(first, survivors, 200)
    assert sorted(len(s) for s in second.values()) == [0, 200]


def test_growth_opens_new_chunks_with_new_ids() -> None:
    first = plan_chunks({}, syms(200), 200)
    second = plan_chunks(first, syms(200) | syms(10, "N"), 200)
    assert second[0] == first[0]
    assert second[1] == frozenset(syms(10, "N"))
