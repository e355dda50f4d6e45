"""`tessera generate` / `python -m tessera` and the CLI's answers to bad input: a message and exit
status 2, no traceback."""
from __future__ import annotations

import subprocess
import sys

from tessera import cli

TINY = ["--model-path", "tiny-qwen3", "--kv-cache-tokens", "2048"]


def test_generate_prints_the_greedy_completion(capsys):
    rc = cli.main(["generate", *TINY, "--prompt", "Hello", "--max-new-tokens", "6"])
    printed = capsys.readouterr().out.splitlines()
    from tessera import LLM, SamplingParams

    with LLM(model="tiny-qwen3", kv_cache_tokens=2048) as llm:
        expected = llm.generate("Hello", SamplingParams(temperature=0.0, max_new_tokens=6))[0]
    assert rc == 0 and printed[-1] == expected.text


def test_python_dash_m_runs_the_same_cli():
    proc = subprocess.run([sys.executable, "-m", "tessera", "generate", *TINY, "--prompt", "Hi",
                           "--max-new-tokens", "3", "--log-level", "warning"],
                          check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()


def test_bad_model_path_and_flags_are_messages_not_tracebacks(capsys):
    assert cli.main(["generate", "--model-path", "/no/such/model", "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "error: model path '/no/such/model' does not exist" in err and "Traceback" not in err
    assert cli.main(["generate", *TINY, "--temperature", "-1"]) == 2
    assert "temperature must be >= 0" in capsys.readouterr().err
    assert cli.main(["generate", *TINY, "--chunked-prefill-size", "0"]) == 2
    assert "--chunked-prefill-size" in capsys.readouterr().err


def test_serve_rejects_an_impossible_port_before_loading_anything(caplog):
    assert cli.main(["serve", "--model-path", "tiny-qwen3", "--port", "70000"]) == 2
    assert "--port must be in 0..65535" in caplog.text


def test_generate_chat_uses_the_template_and_counts_bos_once(tmp_path, capsys):
    """--chat renders with the tokenizer's template into ids as HF's apply_chat_template
    (tokenize=True) gives them; a tokenizer without one is refused (no silent ChatML) unless
    --chat-template names one."""
    from hf_models import save_llama3_style_tokenizer
    from transformers import AutoTokenizer

    from tessera import LLM, SamplingParams

    with_template = save_llama3_style_tokenizer(str(tmp_path / "tok"))
    without = save_llama3_style_tokenizer(str(tmp_path / "bare"), chat_template=None)
    args = ["--model-path", "tiny-llama", "--load-format", "dummy", "--kv-cache-tokens", "2048",
            "--max-new-tokens", "4", "--chat", "--prompt", "Hi there"]
    assert cli.main(["generate", *args, "--tokenizer-path", with_template]) == 0
    printed = capsys.readouterr().out.splitlines()[-1]
    ids = AutoTokenizer.from_pretrained(with_template).apply_chat_template(
        [{"role": "user", "content": "Hi there"}], tokenize=True, add_generation_prompt=True,
        return_dict=False)
    ids = list(ids)
    assert ids.count(ids[0]) == 1  # one BOS
    with LLM("tiny-llama", load_format="dummy", kv_cache_tokens=2048,
             tokenizer_path=with_template) as llm:
        want = llm.generate(prompt_token_ids=[ids], sampling_params=SamplingParams(
            temperature=0.0, max_new_tokens=4))[0].text
    assert printed == want
    assert cli.main(["generate", *args, "--tokenizer-path", without]) == 2
    assert "no chat template" in capsys.readouterr().err
    assert cli.main(["generate", *args, "--tokenizer-path", without, "--chat-template",
                     "chatml"]) == 0
