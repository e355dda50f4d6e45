"""Completions echo + prompt logprobs against HF transformers on the same tiny random Llama, and
chat prompts rendered as HF renders them (one BOS) with a Llama-3-style tokenizer."""
from __future__ import annotations

import json
import math
import os

import httpx
import openai
import pytest
import torch
from hf_models import load_hf, save_llama3_style_tokenizer, save_tiny_model

from tessera.server.testing import ServerProcess

PROMPTS = ["The capital of France is Paris.", "1 2 3 4 5 6", "héllo wörld"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("llama3ish"))
    save_tiny_model(path, "llama")
    save_llama3_style_tokenizer(path)
    # Llama 3 instruct's pattern: a second EOS (<|eot_id|>, 257 here) and sampling defaults
    with open(os.path.join(path, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": [2, 257], "temperature": 0.0}, f)
    return path


@pytest.fixture(scope="module")
def server(model_dir):
    with ServerProcess(["--model-path", model_dir, "--kv-cache-tokens", "8192",
                        "--served-model-name", "tiny"]) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def hf(model_dir):
    from transformers import AutoTokenizer

    return load_hf(model_dir), AutoTokenizer.from_pretrained(model_dir)


def hf_prompt_logprobs(hf, text: str) -> tuple[list[int], list[float]]:
    model, tok = hf
    ids = tok.encode(text)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return ids, [float(logprobs[i, ids[i + 1]]) for i in range(len(ids) - 1)]


def test_tokenize_token_strs_are_the_vocabulary_pieces(server, hf):
    """vLLM's /tokenize token_strs: each id's vocabulary entry as the tokenizer spells it (byte-level
    BPE's "Ġ" for a space), not its decoded text."""
    _, tok = hf
    text = "héllo wörld, one two"
    out = httpx.post(f"{server.base_url}/tokenize", timeout=30,
                     json={"prompt": text, "return_token_strs": True}).json()
    assert out["tokens"] == tok.encode(text)
    assert out["token_strs"] == tok.convert_ids_to_tokens(out["tokens"])
    assert any(s.startswith("Ġ") for s in out["token_strs"])


@pytest.mark.parametrize("max_tokens", [0, 1])
def test_echo_prompt_logprobs_equal_hf(client, hf, max_tokens):
    out = client.completions.create(model="tiny", prompt=PROMPTS, max_tokens=max_tokens,
                                    echo=True, logprobs=1, temperature=0)
    for text, choice in zip(PROMPTS, out.choices):
        ids, expected = hf_prompt_logprobs(hf, text)
        lp = choice.logprobs
        assert choice.text.startswith(text)
        assert len(lp.token_logprobs) == len(ids) + max_tokens and lp.token_logprobs[0] is None
        got = lp.token_logprobs[1:len(ids)]
        assert got == pytest.approx(expected, abs=1e-4)
        assert math.fsum(got) == pytest.approx(math.fsum(expected), abs=1e-4)
        # what lm-evaluation-harness reads: a top-1 dict at every prompt position
        assert all(len(top) >= 1 for top in lp.top_logprobs[1:])
    assert out.usage.completion_tokens == max_tokens * len(PROMPTS)


def test_echo_streams_the_prompt_first(client):
    chunks = list(client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=3,
                                            echo=True, temperature=0, stream=True))
    whole = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=3, echo=True,
                                      temperature=0).choices[0].text
    assert chunks[0].choices[0].text.startswith(PROMPTS[0])
    assert "".join(c.choices[0].text for c in chunks) == whole


def test_logprobs_zero_reports_the_sampled_token(client):
    lp = client.completions.create(model="tiny", prompt="a", max_tokens=4, temperature=0,
                                   logprobs=0).choices[0].logprobs
    assert len(lp.top_logprobs) == 4
    for tok, chosen, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert top == {tok: chosen}


def test_generation_config_defaults_and_eos(client, server):
    import httpx

    info = httpx.get(f"{server.base_url}/get_model_info").json()
    assert 257 in info["eos_token_ids"] and 2 in info["eos_token_ids"]
    kw = {"model": "tiny", "prompt": "defaults", "max_tokens": 8, "seed": 3,
          "extra_body": {"ignore_eos": True}}
    default = client.completions.create(**kw).choices[0].text  # temperature 0 from the file
    assert default == client.completions.create(**kw, temperature=0).choices[0].text
    sampled = {client.completions.create(**{**kw, "seed": s}, temperature=1.0).choices[0].text
               for s in range(4)}
    assert len(sampled) > 1  # an explicit temperature overrides the default


def test_chat_prompt_has_one_bos_like_hf(client, hf):
    _, tok = hf
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    expected = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    expected = expected if isinstance(expected, list) else expected["input_ids"]
    assert expected.count(tok.bos_token_id) == 1
    out = client.chat.completions.create(model="tiny", messages=messages, max_tokens=1)
    assert out.usage.prompt_tokens == len(expected)


def test_continue_final_message_extends_the_assistant_turn(client, hf):
    _, tok = hf
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello,"}]
    expected = tok.apply_chat_template(messages, tokenize=True, continue_final_message=True)
    expected = expected if isinstance(expected, list) else expected["input_ids"]
    out = client.chat.completions.create(model="tiny", messages=messages, max_tokens=1,
                                         extra_body={"continue_final_message": True})
    assert out.usage.prompt_tokens == len(expected)


LM_EVAL_DOCS = [("The capital of France is", " Paris."), ("One, two,", " three"),
                ("Cats and", " dogs are friends"), ("x", " y")]
LM_EVAL_TASK = """task: tessera_tiny_loglikelihood
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{continuation}}}}"
target_delimiter: ""
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
"""


def test_lm_eval_local_completions_loglikelihood_equals_hf(server, model_dir, hf, tmp_path,
                                                           monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"context": c, "continuation": t}) + "\n"
                            for c, t in LM_EVAL_DOCS))
    (tmp_path / "task.yaml").write_text(LM_EVAL_TASK.format(data=data))
    results = lm_eval.simple_evaluate(
        model="local-completions", tasks=["tessera_tiny_loglikelihood"],
        model_args=f"model=tiny,base_url={server.base_url}/v1/completions,"
                   f"tokenizer_backend=huggingface,tokenizer={model_dir},num_concurrent=1,"
                   "max_retries=1,tokenized_requests=True",
        task_manager=TaskManager(include_path=str(tmp_path)), log_samples=True)
    samples = sorted(results["samples"]["tessera_tiny_loglikelihood"], key=lambda s: s["doc_id"])
    model, tok = hf
    for (context, continuation), sample in zip(LM_EVAL_DOCS, samples, strict=True):
        ctx = tok.encode(context, add_special_tokens=False)
        whole = tok.encode(context + continuation, add_special_tokens=False)
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
        expected = math.fsum(float(logprobs[i - 1, whole[i]]) for i in range(len(ctx),
                                                                             len(whole)))
        loglikelihood = sample["resps"][0][0][0]
        assert loglikelihood == pytest.approx(expected, abs=1e-4)
