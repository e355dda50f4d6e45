"""Few-shot GSM8K accuracy against any OpenAI-compatible server (`/v1/completions`).

    tessera bench gsm8k --data-path test.jsonl --num-shots 5 --num-questions 200 --parallel 64
    tessera bench gsm8k --synthetic --num-questions 200        # no data file needed

Prompts are "Question: ...\\nAnswer: ..." few-shot examples (the first --num-shots lines of the data)
followed by the question; decoding is greedy and stops at "Question"; the last number in the output
is the answer, compared with the number after "####" in the reference. Prints Accuracy, Invalid
(no number in the output), Latency (wall clock) and Output throughput, plus the share of prompt
tokens the server reported as cached (the few-shot prefix is shared, so a prefix cache shows here).

`--synthetic` generates simple arithmetic word problems in GSM8K's format so the client runs
anywhere; `tessera/bench/data/gsm8k_sample.jsonl` holds 30 hand-written ones.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import re
import sys
import time
from typing import Any

import httpx

SAMPLE_DATA = os.path.join(os.path.dirname(__file__), "data", "gsm8k_sample.jsonl")
STOP = ["Question", "Assistant:", "<|separator|>"]
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclasses.dataclass
class Problem:
    question: str
    answer: str  # reasoning, then "#### <number>"

    @property
    def label(self) -> float | None:
        return parse_number(self.answer.rsplit("####", 1)[-1]) if "####" in self.answer else None


def parse_number(text: str) -> float | None:
    match = _NUMBER.search(text.strip())
    return float(match.group().replace(",", "")) if match else None


def last_number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def load_jsonl(path: str) -> list[Problem]:
    problems = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            obj = json.loads(line)
            if "question" not in obj or "answer" not in obj:
                raise SystemExit(f"{path}:{n}: each line needs 'question' and 'answer' fields")
            problems.append(Problem(obj["question"], obj["answer"]))
    return problems


# ---- synthetic problems -------------------------------------------------------------------------
_PEOPLE = [("Maya", "she"), ("Liam", "he"), ("Ana", "she"), ("Omar", "he"), ("Chen", "he"),
           ("Priya", "she"), ("Tom", "he"), ("Zoe", "she"), ("Kofi", "he"), ("Ines", "she")]
_ITEMS = ["apples", "stickers", "marbles", "pencils", "cookies", "stamps", "shells", "cards"]


def _calc(a: int, op: str, b: int) -> tuple[str, int]:
    r = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
    return f"{a} {op} {b} = <<{a}{op}{b}={r}>>{r}", r


def synthetic_problem(rng: random.Random) -> Problem:
    (name, pron), item = rng.choice(_PEOPLE), rng.choice(_ITEMS)
    kind = rng.randrange(5)
    if kind == 0:
        a, b = rng.randint(5, 60), rng.randint(2, 40)
        c = rng.randint(1, a + b)
        s1, t = _calc(a, "+", b)
        s2, r = _calc(t, "-", c)
        q = (f"{name} has {a} {item}. {pron.capitalize()} gets {b} more and then gives {c} to a "
             f"friend. How many {item} does {name} have now?")
        ans = f"After getting more, {name} has {s1} {item}. After giving some away, {s2}."
    elif kind == 1:
        n, p = rng.randint(2, 9), rng.randint(2, 12)
        bill = rng.choice([b for b in (20, 50, 100, 200) if b >= n * p])
        s1, cost = _calc(n, "*", p)
        s2, r = _calc(bill, "-", cost)
        q = (f"{name} buys {n} notebooks that cost ${p} each and pays with a ${bill} bill. "
             f"How much change does {pron} get?")
        ans = f"The notebooks cost {s1} dollars. The change is {s2} dollars."
    elif kind == 2:
        per, hours = rng.randint(3, 40), rng.randint(2, 12)
        s1, r = _calc(per, "*", hours)
        q = (f"A machine packs {per} boxes every hour. How many boxes does it pack in {hours} "
             f"hours?")
        ans = f"In {hours} hours it packs {s1} boxes."
    elif kind == 3:
        each, friends = rng.randint(2, 15), rng.randint(2, 9)
        total = each * friends
        s1, r = _calc(total, "/", friends)
        q = (f"{name} shares {total} {item} equally among {friends} friends. How many {item} "
             f"does each friend get?")
        ans = f"Each friend gets {s1} {item}."
    else:
        a, b = rng.randint(5, 30), rng.randint(10, 50)
        s1, wk = _calc(5, "*", a)
        s2, we = _calc(2, "*", b)
        s3, r = _calc(wk, "+", we)
        q = (f"{name} reads {a} pages on each weekday and {b} pages on each day of the weekend. "
             f"How many pages does {pron} read in one week?")
        ans = f"On weekdays {pron} reads {s1} pages. On the weekend {s2} pages. In total {s3}."
    return Problem(q, f"{ans}\n#### {r}")


def synthetic_problems(n: int, seed: int) -> list[Problem]:
    rng = random.Random(seed)
    return [synthetic_problem(rng) for _ in range(n)]


# ---- the run ------------------------------------------------------------------------------------
def build_prompts(shots: list[Problem], questions: list[Problem]) -> list[str]:
    prefix = "".join(f"Question: {p.question}\nAnswer: {p.answer}\n\n" for p in shots)
    return [f"{prefix}Question: {p.question}\nAnswer:" for p in questions]


async def run(args: argparse.Namespace, shots: list[Problem], questions: list[Problem]
              ) -> dict[str, Any]:
    base = (args.base_url or f"http://{args.host}:{args.port}").rstrip("/")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    prompts = build_prompts(shots, questions)
    gate = asyncio.Semaphore(args.parallel)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=args.timeout, headers=headers, limits=limits) as http:
        model = args.model
        if model is None:
            r = await http.get(f"{base}/v1/models")
            r.raise_for_status()
            model = r.json()["data"][0]["id"]

        async def ask(prompt: str) -> dict[str, Any]:
            body = {"model": model, "prompt": prompt, "max_tokens": args.max_tokens,
                    "temperature": 0.0, "stop": STOP}
            async with gate:
                try:
                    r = await http.post(f"{base}/v1/completions", json=body)
                except httpx.HTTPError as e:
                    return {"error": f"{type(e).__name__}: {e}"}
            if r.status_code != 200:
                return {"error": f"HTTP {r.status_code}: {r.text[:200]}"}
            return r.json()

        start = time.perf_counter()
        replies = await asyncio.gather(*(ask(p) for p in prompts))
        latency = time.perf_counter() - start
    return score(args, model, questions, replies, latency)


def score(args: argparse.Namespace, model: str, questions: list[Problem],
          replies: list[dict[str, Any]], latency: float) -> dict[str, Any]:
    correct = invalid = failed = out_tokens = prompt_tokens = cached = 0
    records = []
    for p, reply in zip(questions, replies):
        if "error" in reply:
            failed += 1
            records.append({"question": p.question, "error": reply["error"]})
            continue
        text = reply["choices"][0]["text"]
        usage = reply.get("usage") or {}
        out_tokens += usage.get("completion_tokens", 0)
        prompt_tokens += usage.get("prompt_tokens", 0)
        cached += (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        pred, label = last_number(text), p.label
        invalid += pred is None
        ok = pred is not None and label is not None and abs(pred - label) < 1e-6
        correct += ok
        records.append({"question": p.question, "output": text, "pred": pred, "label": label,
                        "correct": ok})
    n = len(questions)
    return {"model": model, "num_questions": n, "num_shots": args.num_shots,
            "data": "synthetic" if args.synthetic else args.data_path,
            "accuracy": correct / n, "invalid": invalid / n, "failed": failed,
            "latency_s": latency, "output_throughput": out_tokens / latency,
            "prompt_tokens": prompt_tokens, "cached_prompt_tokens": cached,
            "cached_ratio": cached / prompt_tokens if prompt_tokens else 0.0,
            "records": records}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tessera bench gsm8k", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data-path", default=None,
                     help=f"GSM8K-format JSONL (question/answer); default {SAMPLE_DATA}")
    src.add_argument("--synthetic", action="store_true", help="generate arithmetic problems")
    p.add_argument("--num-shots", type=int, default=5)
    p.add_argument("--num-questions", type=int, default=200)
    p.add_argument("--parallel", type=int, default=64, help="requests in flight")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--base-url", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--model", default=None, help="default: the first of /v1/models")
    p.add_argument("--api-key", default=None)
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--seed", type=int, default=0, help="for --synthetic")
    p.add_argument("--output-file", default=None, help="write results (and outputs) as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_shots < 0 or args.num_questions < 1 or args.parallel < 1:
        raise SystemExit("--num-shots >= 0, --num-questions >= 1 and --parallel >= 1 please")
    if args.synthetic:
        problems = synthetic_problems(args.num_shots + args.num_questions, args.seed)
    else:
        problems = load_jsonl(args.data_path or SAMPLE_DATA)
    shots, questions = problems[:args.num_shots], problems[args.num_shots:]
    if not questions:
        raise SystemExit(f"no questions left after {args.num_shots} shots "
                         f"({len(problems)} problems in the data)")
    questions = questions[:args.num_questions]
    result = asyncio.run(run(args, shots, questions))
    print(f"Accuracy: {result['accuracy']:.3f}")
    print(f"Invalid: {result['invalid']:.3f}")
    print(f"Latency: {result['latency_s']:.3f} s")
    print(f"Output throughput: {result['output_throughput']:.3f} token/s")
    print(f"Cached prompt tokens: {result['cached_ratio']:.1%}")
    if result["failed"]:
        print(f"Failed requests: {result['failed']}", file=sys.stderr)
    if args.output_file:
        with open(args.output_file, "w") as f:
            json.dump(result, f, indent=2)
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
