"""Radix prefix cache over token ids whose nodes own KV slots (SGLang semantics).

Every node holds a run of tokens (`key`) and the KV slots of those tokens (`value`, one slot per
token); the path from the root to a node spells a cached prefix. The tree OWNS the slots stored in
it: they go back to the allocator only through `evict()` or `reset()`.

Ownership contract with the scheduler (the part that is easy to get wrong):
- `match_prefix()` hands out slots the tree still owns. A request that wants to use them locks
  `last_node` with `inc_lock_ref()`, so they cannot be evicted under it, and unlocks it once done.
- `insert(ids, slots)` returns how many leading tokens were ALREADY cached. For that range the tree
  keeps its own slots and ignores the given ones, so the caller's slots there are duplicates: every
  one of them the caller did not get from the tree must be freed by the caller. Slots past that
  range are taken over by the tree.
- `cache_finished_request()` / `cache_unfinished_request()` do insert + dedupe-free + lock bookkeeping
  in one call; a scheduler should need nothing else. Both take `cached_len`: how many leading slots
  of the request came from the tree (and are locked through `last_node`).
"""
from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from tessera.cache.allocator import TokenSlotAllocator

TokenIds = Sequence[int] | torch.Tensor


class TreeNode:
    # __slots__: a busy server holds many thousands of nodes; hashing is by identity (leaf sets).
    __slots__ = ("children", "id", "key", "last_access_time", "lock_ref", "parent", "value")
    _ids = itertools.count()

    def __init__(self, key: tuple[int, ...], value: torch.Tensor, parent: TreeNode | None) -> None:
        self.id = next(TreeNode._ids)  # tie-breaker for the LRU heap
        self.key = key
        self.value = value  # int64 slots, one per token of key
        self.parent = parent
        self.children: dict[int, TreeNode] = {}  # keyed by first token of the child's key
        self.lock_ref = 0  # number of locks whose path (lock node -> root) passes through here
        self.last_access_time = 0

    def __repr__(self) -> str:
        return f"TreeNode(id={self.id}, len={len(self.key)}, lock_ref={self.lock_ref})"


@dataclass(frozen=True)
class MatchResult:
    """slots: KV slots for the tokens (int64, on the allocator's device).
    last_node: deepest tree node of the cached prefix; lock it to keep that prefix alive.
    length: how many leading tokens are cached in the tree (== slots.numel() for match_prefix)."""

    slots: torch.Tensor
    last_node: TreeNode
    length: int


def _as_key(token_ids: TokenIds) -> tuple[int, ...]:
    # One conversion at the API boundary; everything below compares tuples of Python ints, whose
    # slice equality runs in C (no per-token tensor ops).
    if isinstance(token_ids, torch.Tensor):
        return tuple(token_ids.tolist())
    return tuple(token_ids)


def _common_len(node_key: tuple[int, ...], key: tuple[int, ...], start: int) -> int:
    """Length of the common prefix of node_key and key[start:]."""
    n = min(len(node_key), len(key) - start)
    if node_key[:n] == key[start : start + n]:  # the common case: the whole run matches
        return n
    for i in range(n):
        if node_key[i] != key[start + i]:
            return i
    return n


class RadixCache:
    def __init__(self, allocator: TokenSlotAllocator, disable: bool = False) -> None:
        self.allocator = allocator
        self.device = allocator.device
        self.disable = disable
        self._clock = itertools.count(1)  # logical LRU clock: deterministic, no ties across calls
        self._init_tree()

    def _init_tree(self) -> None:
        self.root = TreeNode((), self._empty(), None)
        self.root.lock_ref = 1  # the root is never evicted and never counted in the sizes
        self._evictable_size = 0  # tokens in nodes with lock_ref == 0
        self._protected_size = 0  # tokens in nodes with lock_ref > 0
        # Invariant: exactly the non-root nodes without children and with lock_ref == 0. Kept up
        # to date so evict() needn't walk the whole tree to find candidates.
        self._evictable_leaves: set[TreeNode] = set()

    def _empty(self) -> torch.Tensor:
        return torch.empty(0, dtype=torch.int64, device=self.device)

    # ------------------------------------------------------------------ sizes
    def evictable_size(self) -> int:
        return self._evictable_size

    def protected_size(self) -> int:
        return self._protected_size

    def total_size(self) -> int:
        """Slots owned by the tree."""
        return self._evictable_size + self._protected_size

    # ------------------------------------------------------------------ match / insert
    def match_prefix(self, token_ids: TokenIds) -> MatchResult:
        """Longest cached prefix of token_ids. Splits the last node when the match ends inside its
        key, so last_node covers exactly the matched prefix (locking it locks no more than that).
        Refreshes the LRU time of every node on the path. Locks nothing."""
        key = _as_key(token_ids)
        if self.disable or not key:
            return MatchResult(self._empty(), self.root, 0)
        node, pos, path = self._descend(key, next(self._clock))
        slots = torch.cat([n.value for n in path]) if path else self._empty()
        return MatchResult(slots, node, pos)

    def insert(self, token_ids: TokenIds, slots: torch.Tensor) -> int:
        """Cache token_ids with their KV slots; returns how many leading tokens were ALREADY cached.
        The tree keeps its existing slots for that range, so the caller must free its own slots
        there except those it got from the tree (see cache_finished_request). Slots after that
        range now belong to the tree (they are copied, so the caller may reuse its tensor)."""
        key = _as_key(token_ids)
        if len(key) != slots.numel():
            raise ValueError(f"insert: {len(key)} token ids but {slots.numel()} slots")
        if self.disable or not key:
            return 0
        now = next(self._clock)
        node, pos, _ = self._descend(key, now)
        if pos < len(key):
            value = slots[pos:].to(device=self.device, dtype=torch.int64, copy=True)
            leaf = TreeNode(key[pos:], value, node)
            leaf.last_access_time = now
            node.children[key[pos]] = leaf
            self._evictable_size += len(leaf.key)
            self._refresh_leaf(leaf)
            self._refresh_leaf(node)  # it has a child now
        return pos

    def _descend(self, key: tuple[int, ...], now: int) -> tuple[TreeNode, int, list[TreeNode]]:
        """Walk down from the root as far as the tree holds key: (node reached, tokens matched,
        nodes passed below the root). A match ending inside a node's key splits that node, so the
        node reached covers exactly the matched prefix; every node passed gets LRU time `now`.
        The one walk of match_prefix and insert, so both split and refresh the same way."""
        node, pos, path = self.root, 0, []
        while pos < len(key):
            child = node.children.get(key[pos])
            if child is None:
                break
            n = _common_len(child.key, key, pos)
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access_time = now
            path.append(child)
            node, pos = child, pos + n  # after a split, key[pos] has no child here: loop ends
        return node, pos, path

    def _split(self, child: TreeNode, n: int) -> TreeNode:
        """Cut child's key after n tokens; returns the new upper node. The original node object
        keeps the lower part, so any request holding it as last_node still covers the same
        prefix; the new node inherits its lock_ref because every lock through child passes it."""
        parent = child.parent
        assert parent is not None and 0 < n < len(child.key)
        upper = TreeNode(child.key[:n], child.value[:n].clone(), parent)
        upper.lock_ref = child.lock_ref
        upper.last_access_time = child.last_access_time
        upper.children[child.key[n]] = child
        parent.children[child.key[0]] = upper
        child.key, child.value, child.parent = child.key[n:], child.value[n:].clone(), upper
        return upper  # sizes and the leaf set are unchanged: same tokens, same locks

    # ------------------------------------------------------------------ locks
    def inc_lock_ref(self, node: TreeNode) -> None:
        """Protect node and all its ancestors from eviction until dec_lock_ref(node)."""
        while node is not self.root:
            if node.lock_ref == 0:
                self._evictable_size -= len(node.key)
                self._protected_size += len(node.key)
                self._evictable_leaves.discard(node)
            node.lock_ref += 1
            node = node.parent  # type: ignore[assignment]

    def dec_lock_ref(self, node: TreeNode) -> None:
        while node is not self.root:
            assert node.lock_ref > 0, f"dec_lock_ref on unlocked {node}"
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self._evictable_size += len(node.key)
                self._protected_size -= len(node.key)
                self._refresh_leaf(node)
            node = node.parent  # type: ignore[assignment]

    def _refresh_leaf(self, node: TreeNode) -> None:
        if node is not self.root and not node.children and node.lock_ref == 0:
            self._evictable_leaves.add(node)
        else:
            self._evictable_leaves.discard(node)

    # ------------------------------------------------------------------ scheduler helpers
    def cache_finished_request(
        self, token_ids: TokenIds, slots: torch.Tensor, cached_len: int, last_node: TreeNode
    ) -> None:
        """Hand a finished request's KV over to the tree and release its lock.

        token_ids/slots: every token whose KV has been written, with its slot (a final sampled
        token that was never forwarded has no KV: leave it out and free its slot, if any, yourself).
        cached_len/last_node: what the request got from the tree (its last match_prefix or
        cache_unfinished_request) and holds locked; token_ids must extend that prefix. Afterwards
        the request owns no slots."""
        if self.disable:
            assert cached_len == 0, "a disabled cache hands out no slots"
            self.allocator.free(slots)
            return
        already = self.insert(token_ids, slots)
        assert already >= cached_len, "the locked prefix must still be cached"
        # [0, cached_len) are the tree's own slots; [cached_len, already) were inserted meanwhile
        # by another request, so ours are duplicates.
        self.allocator.free(slots[cached_len:already])
        self.dec_lock_ref(last_node)

    def cache_unfinished_request(
        self, token_ids: TokenIds, slots: torch.Tensor, cached_len: int, last_node: TreeNode
    ) -> MatchResult:
        """Cache the tokens computed so far (e.g. at a chunked-prefill boundary) and move the
        request's lock to the node covering all of them.

        Arguments as in cache_finished_request. Returns the slots the request must now use for
        token_ids (some of its own may have been replaced by the tree's and freed), the new
        last_node (already locked; the old lock is released) and the new cached_len (`length`)."""
        if self.disable:
            return MatchResult(slots, last_node, cached_len)
        already = self.insert(token_ids, slots)
        assert already >= cached_len, "the locked prefix must still be cached"
        self.allocator.free(slots[cached_len:already])
        match = self.match_prefix(token_ids)
        assert match.length == slots.numel(), "everything just inserted must match"
        self.inc_lock_ref(match.last_node)  # lock the new path before unlocking the old one
        self.dec_lock_ref(last_node)
        return match

    # ------------------------------------------------------------------ eviction
    def evict(self, num_tokens: int) -> int:
        """Free unlocked leaves, least recently used first, until at least num_tokens slots are
        freed or nothing evictable is left; returns the count (whole nodes go, so it may exceed
        num_tokens). A parent left childless and unlocked becomes a candidate in turn."""
        if self.disable or num_tokens <= 0:
            return 0
        heap = [(n.last_access_time, n.id, n) for n in self._evictable_leaves]
        heapq.heapify(heap)
        freed: list[torch.Tensor] = []
        num_freed = 0
        while num_freed < num_tokens and heap:
            _, _, node = heapq.heappop(heap)
            parent = node.parent
            assert parent is not None and node.lock_ref == 0 and not node.children
            freed.append(node.value)
            num_freed += len(node.key)
            del parent.children[node.key[0]]
            self._evictable_size -= len(node.key)
            self._evictable_leaves.discard(node)
            self._refresh_leaf(parent)
            if parent in self._evictable_leaves:
                heapq.heappush(heap, (parent.last_access_time, parent.id, parent))
        if freed:  # one free: the allocator's free() copies its whole free list each call
            self.allocator.free(torch.cat(freed))
        return num_freed

    def reset(self) -> None:
        """Free every cached slot back to the allocator. Only valid while nothing is locked."""
        if self._protected_size:
            raise RuntimeError(
                f"cannot reset the radix cache: {self._protected_size} tokens are locked by "
                "running requests; finish or abort them first"
            )
        values = [n.value for n in self.nodes()]
        if values:
            self.allocator.free(torch.cat(values))
        self._init_tree()

    # ------------------------------------------------------------------ debugging
    def nodes(self) -> Iterator[TreeNode]:
        """Every non-root node, parents before children."""
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def pretty_print(self) -> str:
        """Print (and return) the tree, one node per line, indented by depth."""
        header = (f"RadixCache: total={self.total_size()} evictable={self._evictable_size} "
                  f"protected={self._protected_size}")
        lines = [header]

        stack = [(child, 1) for child in reversed(self.root.children.values())]
        while stack:  # iterative: long shared prefixes can make deep chains of split nodes
            node, depth = stack.pop()
            toks = list(node.key[:8]) + (["..."] if len(node.key) > 8 else [])
            lines.append(f"{'  ' * depth}{toks} len={len(node.key)} "
                         f"lock={node.lock_ref} t={node.last_access_time}")
            stack.extend((child, depth + 1) for child in reversed(node.children.values()))
        text = "\n".join(lines)
        print(text)
        return text
