"""`tessera serve | generate | bench ...` (also `python -m tessera`)."""
from __future__ import annotations

import argparse
import logging
import socket
import sys


def _setup_logging(level: str = "info") -> None:
    logging.basicConfig(level=level.upper(), format="[%(asctime)s %(name)s] %(message)s",
                        datefmt="%H:%M:%S")


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("sampling options")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=-1)
    g.add_argument("--min-p", type=float, default=0.0)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--frequency-penalty", type=float, default=0.0)
    g.add_argument("--presence-penalty", type=float, default=0.0)
    g.add_argument("--sampling-seed", type=int, default=None, help="per-request sampling seed")
    g.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    g.add_argument("--ignore-eos", action="store_true")


def sampling_params_from_args(args: argparse.Namespace):
    from tessera.sampling.params import SamplingParams

    return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                          top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
                          repetition_penalty=args.repetition_penalty,
                          frequency_penalty=args.frequency_penalty,
                          presence_penalty=args.presence_penalty, seed=args.sampling_seed,
                          stop=args.stop, ignore_eos=args.ignore_eos)


def cmd_generate(args: argparse.Namespace) -> int:
    from tessera.config import EngineConfig
    from tessera.engine.llm import LLM

    config = EngineConfig.from_cli(args)
    flat = config.engine_flat()
    try:
        params = sampling_params_from_args(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        llm = LLM(model=flat.pop("model_path"), **flat)
    except (FileNotFoundError, ValueError) as e:  # a bad model path or engine flag
        print(f"error: {e}", file=sys.stderr)
        return 2
    prompts = args.prompt or ["Hello, my name is"]
    inputs: dict = {"prompts": prompts}
    if args.chat:
        # the server's renderer: --chat-template, else the tokenizer's own; ids as HF's
        # apply_chat_template(tokenize=True) gives them (BOS once)
        from tessera.server.chat_template import ChatTemplate
        from tessera.server.errors import APIError

        template = ChatTemplate(llm.tokenizer, args.chat_template)
        try:
            inputs = {"prompt_token_ids": [
                template.render_ids([{"role": "user", "content": p}], None) for p in prompts]}
        except APIError as e:
            print(f"error: {e.message}", file=sys.stderr)
            llm.shutdown()
            return 2
    for p, out in zip(prompts, llm.generate(**inputs, sampling_params=params)):
        if len(prompts) > 1:
            print(f"--- prompt: {p!r}")
        print(out.text)
        logging.getLogger("tessera").info(
            "%d prompt tokens, %d output tokens, finish reason %s", out.num_prompt_tokens,
            len(out.token_ids), out.finish_reason)
    llm.shutdown()
    return 0


def build_parser() -> argparse.ArgumentParser:
    # these register their backends / parsers as CLI choices
    import tessera.attention
    import tessera.sampling.ops
    import tessera.scheduler.grammar
    import tessera.server.reasoning
    import tessera.server.tool_parsers  # noqa: F401
    from tessera.config import EngineConfig

    parser = argparse.ArgumentParser(prog="tessera", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="run prompts offline and print the completions")
    gen.add_argument("--prompt", action="append", help="prompt text (repeatable)")
    gen.add_argument("--chat", action="store_true", help="wrap prompts in the chat template")
    gen.add_argument("--chat-template", default=None,
                     help="with --chat: a Jinja file, an inline Jinja string, or 'chatml' "
                          "(default: the tokenizer's own; without one --chat is refused)")
    EngineConfig.add_cli_args(gen)
    gen.add_argument("--log-level", default="info")
    add_sampling_args(gen)
    gen.set_defaults(func=cmd_generate)

    serve = sub.add_parser("serve", help="OpenAI-compatible HTTP server")
    EngineConfig.add_cli_args(serve, server=True)
    serve.set_defaults(func=_cmd_serve)

    bench = sub.add_parser("bench", help="benchmarks and accuracy clients")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    for name, module in _BENCHES.items():
        p = bench_sub.add_parser(name, help=f"see python -m {module} --help", add_help=False)
        p.set_defaults(func=_bench_runner(module))
    return parser


_BENCHES = {
    "latency": "tessera.bench.latency",
    "serving": "tessera.bench.serving",
    "gsm8k": "tessera.bench.gsm8k",
    "offline": "tessera.bench.offline",
}


def _bench_runner(module: str):
    def run(args: argparse.Namespace, rest: list[str]) -> int:
        import importlib

        return importlib.import_module(module).main(rest) or 0
    return run


def _cmd_serve(args: argparse.Namespace, sock: socket.socket | None = None) -> int:
    from tessera.server.launch import exit_process, serve

    code = serve(args, sock) or 0
    if code == 2:  # a bad flag, refused before the engine or workers started: a plain return
        return code
    exit_process(code)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    sock = None
    if argv and argv[0] == "serve":
        from tessera.server.launch import listen_early

        sock = listen_early(argv[1:])  # claim the port before the parser imports torch
        if isinstance(sock, int):
            return sock
    parser = build_parser()
    if len(argv) >= 2 and argv[0] == "bench":
        # bench sub-commands own their flags
        args, _rest = parser.parse_known_args(argv[:2])
        _setup_logging()
        return args.func(args, argv[2:])
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "log_level", "info"))
    if sock is not None:
        return _cmd_serve(args, sock)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
