"""Radix prefix cache: match/insert/split/evict/lock semantics, and a randomized scheduler simulation
checked against a brute-force reference (the dict of every cached prefix -> slot of its last token)
plus slot conservation at every step."""
from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import torch

from tessera.cache.allocator import TokenSlotAllocator
from tessera.cache.radix import RadixCache, TreeNode


def make(size: int = 64, disable: bool = False) -> RadixCache:
    return RadixCache(TokenSlotAllocator(size, "cpu"), disable=disable)


def insert_fresh(cache: RadixCache, ids: list[int]) -> torch.Tensor:
    """Insert ids with freshly allocated slots, freeing the duplicates; returns the slots used."""
    slots = cache.allocator.alloc(len(ids))
    assert slots is not None
    already = cache.insert(ids, slots)
    cache.allocator.free(slots[:already])
    return slots


def node_prefix(node: TreeNode) -> tuple[int, ...]:
    parts = []
    while node.parent is not None:
        parts.append(node.key)
        node = node.parent
    return tuple(t for key in reversed(parts) for t in key)


def conserved(cache: RadixCache, held: list[torch.Tensor] = ()) -> None:
    """Every usable slot is exactly once in the free list, the tree, or a request."""
    alloc = cache.allocator
    tree = [n.value for n in cache.nodes()]
    every = torch.cat([alloc.free_slots, *tree, *held]).sort().values
    assert alloc.available_size() + cache.total_size() + sum(h.numel() for h in held) == alloc.size
    assert torch.equal(every, torch.arange(1, alloc.size + 1))


# ---------------------------------------------------------------------------- unit tests
def test_match_returns_inserted_slots_of_longest_prefix() -> None:
    cache = make()
    slots = insert_fresh(cache, [1, 2, 3])
    m = cache.match_prefix([1, 2, 3, 4])
    assert m.length == 3 and torch.equal(m.slots, slots) and m.slots.dtype == torch.int64
    assert cache.match_prefix([5, 1]).length == 0
    assert cache.match_prefix([5, 1]).last_node is cache.root
    assert cache.match_prefix([]).length == 0
    assert cache.match_prefix(torch.tensor([1, 2])).length == 2  # tensors are accepted too
    conserved(cache)


def test_insert_returns_already_cached_length_and_keeps_old_slots() -> None:
    cache = make()
    alloc = cache.allocator
    first = insert_fresh(cache, [1, 2, 3])
    second = alloc.alloc(5)
    assert cache.insert([1, 2, 3, 7, 8], second) == 3
    alloc.free(second[:3])  # the caller's duplicates for the cached range
    m = cache.match_prefix([1, 2, 3, 7, 8])
    assert torch.equal(m.slots, torch.cat([first, second[3:]]))
    dup = alloc.alloc(2)
    assert cache.insert([1, 2], dup) == 2  # fully cached: the tree takes nothing
    alloc.free(dup)
    assert cache.total_size() == 5
    conserved(cache)
    with pytest.raises(ValueError, match="3 token ids but 2 slots"):
        cache.insert([1, 2, 3], torch.tensor([4, 5]))


def test_match_splits_node_so_last_node_covers_exactly_the_match() -> None:
    cache = make()
    slots = insert_fresh(cache, [1, 2, 3, 4])
    m = cache.match_prefix([1, 2, 9])
    assert m.length == 2 and torch.equal(m.slots, slots[:2])
    assert m.last_node.key == (1, 2) and [c.key for c in m.last_node.children.values()] == [(3, 4)]
    cache.inc_lock_ref(m.last_node)
    assert cache.protected_size() == 2 and cache.evictable_size() == 2
    assert cache.evict(100) == 2  # only the unlocked tail [3, 4] can go
    assert torch.equal(cache.match_prefix([1, 2, 3, 4]).slots, slots[:2])
    cache.dec_lock_ref(m.last_node)
    assert cache.protected_size() == 0 and cache.evictable_size() == 2
    conserved(cache)


def test_split_under_a_held_lock_keeps_the_lock_consistent() -> None:
    cache = make()
    insert_fresh(cache, [1, 2, 3, 4])
    held = cache.match_prefix([1, 2, 3, 4]).last_node
    cache.inc_lock_ref(held)
    upper = cache.match_prefix([1, 2]).last_node  # splits the locked node
    assert upper is held.parent and upper.lock_ref == 1 and held.key == (3, 4)
    assert cache.protected_size() == 4 and cache.evict(100) == 0
    cache.dec_lock_ref(held)
    assert upper.lock_ref == 0 and cache.evictable_size() == 4 and cache.protected_size() == 0


def test_evict_least_recently_used_leaf_first_then_exposed_parents() -> None:
    cache = make()
    insert_fresh(cache, [1, 2, 3])  # shared parent [1] after the next insert
    insert_fresh(cache, [1, 5, 6])
    insert_fresh(cache, [7, 8])
    cache.match_prefix([1, 2, 3])  # now [1,5,6] and [7,8] are older
    assert cache.evict(1) == 2  # [1]-[5,6] is the oldest leaf ([1] is shared, touched later)
    assert cache.match_prefix([1, 5]).length == 1
    assert cache.evict(1) == 2 and cache.match_prefix([7]).length == 0
    assert cache.evict(3) == 3  # [2,3] then its parent [1], now a childless unlocked node
    assert cache.total_size() == 0 and cache.evict(5) == 0
    conserved(cache)


def test_evict_never_touches_locked_paths() -> None:
    cache = make()
    alloc = cache.allocator
    insert_fresh(cache, [1, 2, 3])
    insert_fresh(cache, [1, 2, 4, 5])
    node = cache.match_prefix([1, 2, 3]).last_node
    cache.inc_lock_ref(node)
    cache.inc_lock_ref(node)  # two requests share it
    assert cache.evict(100) == 2  # only [4, 5]
    cache.dec_lock_ref(node)
    assert cache.evict(100) == 0  # still held by the second request
    cache.dec_lock_ref(node)
    assert cache.evict(100) == 3 and alloc.available_size() == alloc.size


def test_reset_refuses_while_locked_and_then_frees_everything() -> None:
    cache = make()
    alloc = cache.allocator
    insert_fresh(cache, [1, 2, 3])
    insert_fresh(cache, [4])
    node = cache.match_prefix([1, 2]).last_node
    cache.inc_lock_ref(node)
    with pytest.raises(RuntimeError, match="locked"):
        cache.reset()
    cache.dec_lock_ref(node)
    cache.reset()
    assert cache.total_size() == 0 and alloc.available_size() == alloc.size
    assert cache.match_prefix([1, 2, 3]).length == 0
    assert "total=0" in cache.pretty_print()


def test_finished_requests_dedupe_identical_prompts() -> None:
    """Two requests prefill the same prompt concurrently (no cache hit for either); the second to
    finish frees its duplicate slots and the tree keeps the first one's."""
    cache = make(16)
    alloc = cache.allocator
    prompt = [3, 1, 4, 1, 5]
    a, b = alloc.alloc(5), alloc.alloc(5)
    cache.cache_finished_request(prompt, a, 0, cache.root)
    cache.cache_finished_request(prompt + [9], torch.cat([b, alloc.alloc(1)]), 0, cache.root)
    assert cache.total_size() == 6 and alloc.available_size() == 10
    assert torch.equal(cache.match_prefix(prompt).slots, a)
    conserved(cache)


def test_chunked_prefill_flow_with_unfinished_request() -> None:
    cache = make(32)
    alloc = cache.allocator
    other = insert_fresh(cache, [1, 2, 3, 4, 5, 6])  # another request's finished prompt
    ids = [1, 2, 7, 7, 7, 7, 7, 7]
    m = cache.match_prefix(ids)
    cache.inc_lock_ref(m.last_node)
    slots = torch.cat([m.slots, alloc.alloc(len(ids) - m.length)])
    # chunk 1 computed up to 5 tokens
    r = cache.cache_unfinished_request(ids[:5], slots[:5], m.length, m.last_node)
    assert r.length == 5 and torch.equal(r.slots, slots[:5]) and r.last_node.lock_ref == 1
    assert m.last_node.lock_ref == 1  # still on the new path
    assert cache.protected_size() == 5
    slots[:5] = r.slots
    cache.cache_finished_request(ids, slots, r.length, r.last_node)
    assert cache.protected_size() == 0 and cache.total_size() == 6 + 6
    assert torch.equal(cache.match_prefix([1, 2, 3]).slots, other[:3])
    conserved(cache)


def test_unfinished_request_adopts_slots_cached_meanwhile() -> None:
    cache = make(32)
    alloc = cache.allocator
    ids = [5, 6, 7, 8]
    mine = alloc.alloc(4)
    theirs = insert_fresh(cache, ids[:3])  # someone else cached [5,6,7] while we computed
    r = cache.cache_unfinished_request(ids, mine, 0, cache.root)
    assert torch.equal(r.slots, torch.cat([theirs, mine[3:]])) and r.length == 4
    conserved(cache)  # mine[:3] went back to the allocator, mine[3] is the tree's now
    cache.dec_lock_ref(r.last_node)


def test_disabled_cache_matches_nothing_and_frees_on_finish() -> None:
    cache = make(16, disable=True)
    alloc = cache.allocator
    slots = alloc.alloc(4)
    assert cache.insert([1, 2, 3, 4], slots) == 0 and cache.total_size() == 0
    m = cache.match_prefix([1, 2, 3, 4])
    assert m.length == 0 and m.slots.numel() == 0 and m.last_node is cache.root
    cache.inc_lock_ref(m.last_node)
    r = cache.cache_unfinished_request([1, 2, 3, 4], slots, 0, m.last_node)
    assert r.length == 0 and torch.equal(r.slots, slots)
    cache.cache_finished_request([1, 2, 3, 4], slots, r.length, r.last_node)
    assert alloc.available_size() == 16 and cache.evict(10) == 0
    cache.reset()


# ---------------------------------------------------------------------------- randomized
@dataclass
class Req:
    ids: list[int]
    slots: torch.Tensor  # one per id; [:cached_len] are the tree's, the rest the request's own
    cached_len: int
    last_node: TreeNode


class Reference:
    """Brute force: every cached prefix -> slot of its last token, and its last access tick."""

    def __init__(self) -> None:
        self.slot: dict[tuple[int, ...], int] = {}
        self.time: dict[tuple[int, ...], int] = {}
        self.tick = 0

    def match(self, ids: list[int]) -> tuple[int, list[int]]:
        n = 0
        while n < len(ids) and tuple(ids[: n + 1]) in self.slot:
            n += 1
        self.touch(ids, n)
        return n, [self.slot[tuple(ids[: i + 1])] for i in range(n)]

    def insert(self, ids: list[int], slots: torch.Tensor) -> int:
        already, _ = self.match(ids)
        for i in range(already, len(ids)):
            self.slot[tuple(ids[: i + 1])] = int(slots[i])
        self.touch(ids, len(ids))
        return already

    def touch(self, ids: list[int], n: int) -> None:
        self.tick += 1
        for i in range(n):
            self.time[tuple(ids[: i + 1])] = self.tick


def tree_content(cache: RadixCache) -> dict[tuple[int, ...], int]:
    out = {}
    for node in cache.nodes():
        assert node.key and len(node.key) == node.value.numel()
        assert node.parent.children[node.key[0]] is node
        base = node_prefix(node)[: -len(node.key)]
        for i, s in enumerate(node.value.tolist()):
            out[base + node.key[: i + 1]] = s
    return out


def check(cache: RadixCache, ref: Reference, reqs: list[Req]) -> None:
    assert tree_content(cache) == ref.slot
    nodes = list(cache.nodes())
    # lock_ref of a node == number of requests whose tree-owned prefix runs through it
    for node in nodes:
        p = node_prefix(node)
        expect = sum(1 for r in reqs if r.cached_len >= len(p) and tuple(r.ids[: len(p)]) == p)
        assert node.lock_ref == expect, (p, node.lock_ref, expect)
    assert cache.protected_size() == sum(len(n.key) for n in nodes if n.lock_ref)
    assert cache.evictable_size() == sum(len(n.key) for n in nodes if not n.lock_ref)
    assert cache._evictable_leaves == {n for n in nodes if not n.children and not n.lock_ref}
    for r in reqs:
        assert r.slots.numel() == len(r.ids)
        assert node_prefix(r.last_node) == tuple(r.ids[: r.cached_len])
        want = [ref.slot[tuple(r.ids[: i + 1])] for i in range(r.cached_len)]
        assert r.slots[: r.cached_len].tolist() == want
    conserved(cache, [r.slots[r.cached_len :] for r in reqs])


def checked_evict(cache: RadixCache, ref: Reference, reqs: list[Req], n: int) -> int:
    before = dict(ref.slot)
    freed = cache.evict(n)
    after = tree_content(cache)
    evicted = set(before) - set(after)
    assert all(before[p] == s for p, s in after.items())  # survivors keep their slots
    assert freed == len(evicted) == len(before) - len(after)
    assert freed >= n or cache.evictable_size() == 0
    locked = {tuple(r.ids[:i]) for r in reqs for i in range(1, r.cached_len + 1)}
    assert not (evicted & locked)
    # LRU: nothing evicted was used more recently than any unlocked leaf left behind
    leaves = [p for p in after if p not in locked and not any(p + (t,) in after for t in range(4))]
    if evicted and leaves:
        assert max(ref.time[p] for p in evicted) <= min(ref.time[p] for p in leaves)
    ref.slot = after
    return freed


def alloc_or_evict(cache: RadixCache, ref: Reference, reqs: list[Req], n: int):
    slots = cache.allocator.alloc(n)
    if slots is None:
        checked_evict(cache, ref, reqs, n - cache.allocator.available_size())
        slots = cache.allocator.alloc(n)
    return slots


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_randomized_against_reference(seed: int) -> None:
    rng = random.Random(seed)
    cache = make(48)
    alloc = cache.allocator
    ref, reqs = Reference(), []
    bases = [[rng.randrange(4) for _ in range(rng.randrange(9))] for _ in range(4)]

    def rand_ids() -> list[int]:
        ids = rng.choice(bases) + [rng.randrange(4) for _ in range(rng.randrange(7))]
        return ids or [rng.randrange(4)]

    for _ in range(2500):
        op = rng.random()
        if op < 0.25 and len(reqs) < 5:  # admit: match, lock, allocate the rest
            ids = rand_ids()
            m = cache.match_prefix(ids)
            n, want = ref.match(ids)
            assert m.length == n and m.slots.tolist() == want
            cache.inc_lock_ref(m.last_node)
            req = Req(ids, m.slots, m.length, m.last_node)
            reqs.append(req)
            new = alloc_or_evict(cache, ref, reqs, len(ids) - m.length)
            if new is None:  # pool too full even after eviction: refuse the request
                reqs.pop()
                cache.dec_lock_ref(m.last_node)
            else:
                req.slots = torch.cat([m.slots, new])
        elif op < 0.40 and reqs:  # chunk boundary: cache what is computed so far
            r = rng.choice(reqs)
            k = rng.randint(r.cached_len, len(r.ids))
            ref.insert(r.ids[:k], r.slots[:k])
            res = cache.cache_unfinished_request(r.ids[:k], r.slots[:k], r.cached_len, r.last_node)
            assert res.length == k
            assert res.slots.tolist() == [ref.slot[tuple(r.ids[: i + 1])] for i in range(k)]
            r.slots = torch.cat([res.slots, r.slots[k:]])
            r.cached_len, r.last_node = res.length, res.last_node
        elif op < 0.55 and reqs:  # decode one token
            r = rng.choice(reqs)
            new = alloc_or_evict(cache, ref, reqs, 1)
            if new is not None:
                r.ids = r.ids + [rng.randrange(4)]
                r.slots = torch.cat([r.slots, new])
        elif op < 0.70 and reqs:  # finish
            r = reqs.pop(rng.randrange(len(reqs)))
            ref.insert(r.ids, r.slots)
            cache.cache_finished_request(r.ids, r.slots, r.cached_len, r.last_node)
        elif op < 0.80:
            checked_evict(cache, ref, reqs, rng.randint(1, 12))
        elif op < 0.92:  # plain lookup
            ids = rand_ids()
            n, want = ref.match(ids)
            m = cache.match_prefix(ids)
            assert m.length == n and m.slots.tolist() == want
        else:  # raw insert with fresh slots; the caller frees the duplicates
            ids = rand_ids()
            slots = alloc_or_evict(cache, ref, reqs, len(ids))
            if slots is not None:
                already = cache.insert(ids, slots)
                assert already == ref.insert(ids, slots)
                alloc.free(slots[:already])
        check(cache, ref, reqs)

    for r in reqs:  # drain: everything is evictable again and reset returns the whole pool
        ref.insert(r.ids, r.slots)
        cache.cache_finished_request(r.ids, r.slots, r.cached_len, r.last_node)
    assert cache.protected_size() == 0
    cache.reset()
    assert alloc.available_size() == alloc.size and cache.total_size() == 0
