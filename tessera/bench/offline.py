"""Offline throughput: N requests with random input/output lengths through the LLM API.

The default workload is nano-vllm's: 256 requests, input and output lengths uniform in 100..1024,
random token ids, ignore_eos so every request produces exactly its output length.

    tessera bench offline --model-path qwen3-0.6b --num-prompts 256 --out result.json
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import time


def main(argv: list[str] | None = None) -> int:
    # these two register their backends as CLI choices
    import tessera.attention
    import tessera.sampling.ops  # noqa: F401
    from tessera.config import EngineConfig
    from tessera.engine.llm import LLM
    from tessera.sampling.params import SamplingParams

    parser = argparse.ArgumentParser(prog="tessera bench offline", description=__doc__)
    parser.add_argument("--num-prompts", type=int, default=256)
    parser.add_argument("--min-len", type=int, default=100)
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON result file")
    EngineConfig.add_cli_args(parser)
    args = parser.parse_args(argv)
    config = EngineConfig.from_cli(args)
    flat = config.engine_flat()
    llm = LLM(model=flat.pop("model_path"), **flat)
    vocab = llm.engine.vocab_size
    rng = random.Random(args.data_seed)
    prompts, params = [], []
    for _ in range(args.num_prompts):
        n_in = rng.randint(args.min_len, args.max_len)
        n_out = rng.randint(args.min_len, args.max_len)
        prompts.append([rng.randrange(vocab) for _ in range(n_in)])
        params.append(SamplingParams(temperature=0.6, max_new_tokens=n_out, ignore_eos=True))
    # warm-up (first-call allocations, kernel autotuning) outside the timed region
    llm.generate(prompt_token_ids=[prompts[0][:16]], sampling_params=SamplingParams(max_new_tokens=4))
    llm.engine.runner.platform.synchronize()
    start = time.perf_counter()
    outs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
    llm.engine.runner.platform.synchronize()
    elapsed = time.perf_counter() - start
    n_out = sum(len(o.token_ids) for o in outs)
    n_in = sum(len(p) for p in prompts)
    result = {
        "benchmark": "offline", "model": config.load.model_path or "tiny-qwen3",
        "num_prompts": args.num_prompts, "input_tokens": n_in, "output_tokens": n_out,
        "elapsed_s": elapsed, "output_tok_per_s": n_out / elapsed,
        "total_tok_per_s": (n_in + n_out) / elapsed,
        "retractions": llm.engine.scheduler.num_retractions,
        "device": llm.engine.runner.platform.device_name(),
        "config": {k: v for k, v in llm.engine.config.flat().items()},
        "git_commit": _git_commit(),
    }
    import torch

    result["torch"] = torch.__version__
    print(f"{args.num_prompts} requests, {n_in} input + {n_out} output tokens in {elapsed:.2f} s: "
          f"{n_out / elapsed:.1f} output tok/s, {(n_in + n_out) / elapsed:.1f} total tok/s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2, default=str)
    llm.shutdown()
    return 0


def _git_commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "HEAD"], text=True,
                                       stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
