"""Shared by the piecewise-graph tests: runners, mixed extend+decode batches, PCG-vs-eager logits."""
from __future__ import annotations

import torch

from tessera.config import EngineConfig
from tessera.forward.batch import ForwardBatch, ForwardMode
from tessera.runner.model_runner import LogitsOutput, ModelRunner
from tessera.runner.piecewise_graph_runner import PiecewiseGraphRunner


def make_pcg_runner(path: str, device: str = "cpu", dtype: str = "float32",
                    **kw) -> ModelRunner:
    """A runner whose graph runner is the piecewise one (enforced on the CPU, where it runs the
    compiled pieces without capture; on by default on a GPU)."""
    kw.setdefault("attention_backend", "torch_native")
    kw.setdefault("disable_cuda_graph", True)
    kw.setdefault("enforce_piecewise_cuda_graph", device == "cpu")
    cfg = EngineConfig.from_kwargs(model_path=path, device=device, dtype=dtype,
                                   kv_cache_tokens=8192, max_running_requests=16, **kw)
    return ModelRunner(cfg)


def pcg_of(runner: ModelRunner) -> PiecewiseGraphRunner:
    (pcg,) = [r for r in runner.graph_runners if isinstance(r, PiecewiseGraphRunner)]
    return pcg


class MixedBatches:
    """Builds EXTEND batches of an exact token count mixing three kinds of request: decoding
    requests (1 new token on a cached prefix), an extend on a cached prefix, and a new prompt."""

    def __init__(self, runner: ModelRunner, seed: int = 0, vocab: int = 300) -> None:
        self.runner = runner
        self.lens: dict[int, int] = {}
        self.gen = torch.Generator().manual_seed(seed)
        self.vocab = vocab

    def _tokens(self, n: int) -> list[int]:
        return torch.randint(3, self.vocab, (n,), generator=self.gen).tolist()

    def _row(self) -> int:
        row = self.runner.req_to_token_pool.alloc()
        assert row is not None, "out of request rows in test"
        self.lens[row] = 0
        return row

    def free(self, keep: tuple[int, ...] | list[int] = ()) -> None:
        """Release every request but `keep` (rows and slots) so a long test never runs out."""
        pool = self.runner.req_to_token_pool
        for row in [r for r in self.lens if r not in keep]:
            self.runner.allocator.free(pool.read(row, 0, self.lens.pop(row)))
            pool.free(row)

    def build(self, items: list[tuple[int, int]], return_all_logits: bool = True) -> ForwardBatch:
        """items: (row, number of new tokens)."""
        rows, prefix, extend, ids, locs = [], [], [], [], []
        for row, n in items:
            slots = self.runner.allocator.alloc(n)
            assert slots is not None, "KV pool exhausted in test"
            self.runner.req_to_token_pool.write(row, self.lens[row], slots)
            rows.append(row)
            prefix.append(self.lens[row])
            extend.append(n)
            ids.extend(self._tokens(n))
            locs.append(slots)
            self.lens[row] += n
        return ForwardBatch.build(ForwardMode.EXTEND, ids, rows, prefix, extend, torch.cat(locs),
                                  self.runner.device, return_all_logits=return_all_logits)

    def prefill(self, lengths: list[int]) -> list[int]:
        """New requests with cached prefixes of these lengths (run eagerly)."""
        rows = [self._row() for _ in lengths]
        if not rows:
            return rows
        batch = self.build(list(zip(rows, lengths)), return_all_logits=False)
        eager_logits(self.runner, batch)
        return rows

    def new_prompt(self, total: int, all_logits: bool = True) -> ForwardBatch:
        """One new request of `total` tokens."""
        return self.build([(self._row(), total)], all_logits)

    def mixed(self, total: int, all_logits: bool = True) -> ForwardBatch:
        """`total` new tokens: up to 3 decoding requests, an extend on a cached prefix, and a
        new prompt, as many of each as the count allows. all_logits=False: only the next-token
        logits (the forward finishes only each request's last token)."""
        n_decode = min(3, total // 3)
        rest = total - n_decode
        n_extend = rest // 2
        n_new = rest - n_extend
        old = self.prefill([4 + i for i in range(n_decode + (n_extend > 0))])
        items = [(row, 1) for row in old[:n_decode]]
        if n_extend:
            items.append((old[-1], n_extend))
        if n_new:
            items.append((self._row(), n_new))
        assert sum(n for _, n in items) == total
        return self.build(items, all_logits)


def eager_logits(runner: ModelRunner, batch: ForwardBatch) -> LogitsOutput:
    with torch.inference_mode():
        return runner.compute_logits(runner.forward_eager(batch), batch)


def pcg_and_eager_logits(runner: ModelRunner, batch: ForwardBatch
                         ) -> tuple[LogitsOutput, LogitsOutput]:
    """The same batch through the piecewise graph and eagerly. Each run writes the batch's own
    K/V before its attention reads them, so the two see identical caches. The eager run is the
    whole model on every token (model.forward: return_all_logits), so a batch that asks only for
    next-token logits checks the runner's finish on the last tokens against it."""
    pcg = pcg_of(runner)
    assert pcg.can_run(batch)
    replays = pcg.replays + pcg.full_replays
    ours = runner.forward(batch)
    assert pcg.replays + pcg.full_replays == replays + 1, (
        "the batch did not go through the piecewise graph")
    assert (ours.all_logits is None) != batch.return_all_logits
    asked, batch.return_all_logits = batch.return_all_logits, True
    try:
        return ours, eager_logits(runner, batch)
    finally:
        batch.return_all_logits = asked
