"""A served teacher over the OpenAI-compatible API, against a real llama-cpp-python server serving SmolLM2.

One server for the module (tests/served_teacher_fixture.py). What is checked: its top-k agrees with the
in-process SmolLM2 (dequantised GGUF) within the tolerance stated below; a teacher cache built through it
by `distill-toolkit cache-teacher` trains a student; on-policy steps are scored by it; each bad input
(unreachable, model not served, fewer log-probs than asked, another vocabulary) is a clear error.
"""

import json
import math
import re
import subprocess
import sys

import pytest
import torch
import yaml
from served_teacher_fixture import MODEL_ALIAS, free_port, llama_server, require_llama_cpp

from distill_toolkit.config import ConfigError, ExperimentConfig
from distill_toolkit.data.sources import smollm2_gguf
from distill_toolkit.losses.logits import sparse_from_dense
from distill_toolkit.teachers.served import ServedTeacher, ServedTeacherError
from distill_toolkit.teachers.served_format import tempered_top_k

TEXTS = [
    "The cat sat on the mat and looked out of the window.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "She opened the door slowly and stepped into the dark room.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The children played in the park until the sun went down.",
    "He bought a loaf of bread, some milk and a dozen eggs.",
    "The train to London leaves at half past nine every morning.",
    "Rain fell all night, and by morning the river had risen.",
    "A good book can keep you company on a long journey.",
    "The committee will meet again next week to discuss the budget.",
    "Most birds build their nests in the spring.",
    "The old man told stories about the war to anyone who would listen.",
    "Please remember to turn off the lights when you leave.",
    "The museum is closed on Mondays but open late on Fridays.",
    "She learned to play the piano when she was seven years old.",
    "The recipe calls for two cups of flour and a pinch of salt.",
]
TOP_K = 16
# Measured here over the 71 next-token positions of TEXTS[:6] (llama.cpp's Q4_1 kernels, which quantise the
# activations too, against the dequantised float32 model): top-1 agreement 0.915, mean |logprob diff| 0.118
# over the server's top-16 entries (0.02-0.26 per position, one at 0.87); the same rows shifted by one
# position differ by 4.6-6.6, so the alignment is right. Asserted with a margin:
MIN_TOP1_AGREEMENT = 0.85
MAX_MEAN_ABS_DIFF = 0.2


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_llama_cpp()
    log = tmp_path_factory.mktemp("llama_server") / "server.log"
    with llama_server(smollm2_gguf(), log) as url:
        yield url, log


@pytest.fixture(scope="module")
def smollm2():
    from distill_toolkit.models import load_gguf_causal_lm

    return load_gguf_causal_lm(smollm2_gguf())


def _cli(*args, timeout=900):
    run = subprocess.run([sys.executable, "-m", "distill_toolkit.cli", *map(str, args)], capture_output=True,
                         text=True, timeout=timeout, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1",
                                                          "OMP_NUM_THREADS": "1"})
    return run


def _summary(run) -> dict:
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout[run.stdout.index("{"):])


def test_served_top_k_agrees_with_the_in_process_teacher(server, smollm2):
    url, _ = server
    model, tokenizer = smollm2
    teacher = ServedTeacher(url, MODEL_ALIAS, tokenizer, TOP_K)
    assert teacher.prompt_format == "text" and teacher.lag in (0, 1)  # llama-cpp-python takes text prompts
    sequences = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS[:6]]
    scored = teacher.score(sequences)
    top1 = diffs = positions = 0
    for ids, sparse in zip(sequences, scored):
        with torch.no_grad():
            local = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), -1)
        assert sparse.logprobs.shape == (len(ids) - 1, TOP_K)
        top1 += int((sparse.indices[:, 0] == local.argmax(-1)).sum())
        diffs += float((sparse.logprobs - local.gather(-1, sparse.indices)).abs().mean(-1).sum())
        positions += len(ids) - 1
        total = torch.logsumexp(torch.cat([sparse.logprobs, sparse.tail_logprob[:, None]], -1), -1)
        assert torch.allclose(total, torch.zeros_like(total), atol=1e-4)  # T = 1: top-k + tail is the whole mass
    agreement, mean_diff = top1 / positions, diffs / positions
    print(f"served vs in-process SmolLM2 over {positions} positions: top-1 agreement {agreement:.3f}, "
          f"mean |logprob diff| over the top-{TOP_K} {mean_diff:.4f}")
    assert agreement >= MIN_TOP1_AGREEMENT and mean_diff <= MAX_MEAN_ABS_DIFF


def test_the_kd_temperature_is_applied_on_our_side():
    torch.manual_seed(0)
    logits = torch.randn(5, 300) * 3
    at_1 = sparse_from_dense(logits, 8, 1.0)  # what a server returns: top-8 log-probs at T = 1
    rows = [dict(zip(i.tolist(), v.tolist())) for i, v in zip(at_1.indices, at_1.logprobs)]
    for temperature in (1.0, 2.0):
        ours = tempered_top_k(rows, 8, 300, temperature)
        exact = sparse_from_dense(logits, 8, temperature)
        assert torch.equal(ours.indices, exact.indices)
        # within the top-k the tempered distribution is exact up to its normaliser...
        gap = ours.logprobs - exact.logprobs
        assert torch.allclose(gap, gap[:, :1].expand_as(gap), atol=1e-5)
        if temperature == 1.0:  # ...and at T = 1 the tail is exact as well
            assert torch.allclose(ours.logprobs, exact.logprobs, atol=1e-5)
            assert torch.allclose(ours.tail_logprob, exact.tail_logprob, atol=1e-4)
        else:  # the even-spread estimate bounds the tempered tail from above
            assert bool((ours.tail_logprob >= exact.tail_logprob - 1e-5).all())


def test_bad_input_is_a_clear_error_with_the_real_server(server, smollm2):
    from distill_toolkit.models import load_tokenizer

    url, _ = server
    _, tokenizer = smollm2
    nowhere = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ServedTeacherError, match=r"cannot reach the teacher server .* after 2 tries.*Fix: start"):
        ServedTeacher(nowhere, MODEL_ALIAS, tokenizer, TOP_K, retries=1, backoff_s=0.05, timeout_s=5)
    with pytest.raises(ServedTeacherError, match=r"does not serve 'gpt-9'; it serves \['smollm2'\]"):
        ServedTeacher(url, "gpt-9", tokenizer, TOP_K)
    with pytest.raises(ServedTeacherError, match=r"asked for 60000 log-probabilities per position, the server "
                                                 r"returned at most (\d+).*lower `teacher.top_k`") as fewer:
        ServedTeacher(url, MODEL_ALIAS, tokenizer, 60000)  # more than its 49,152 tokens
    assert int(fewer.value.args[0].split("at most ")[1].split()[0]) <= 49152
    wordpiece = load_tokenizer("builtin:minilm")  # MiniLM's WordPiece: another vocabulary
    with pytest.raises(ServedTeacherError, match=r"vocabulary differs from the student's tokenizer.*cross-tokenizer"):
        ServedTeacher(url, MODEL_ALIAS, wordpiece, TOP_K)


def test_served_teacher_config_is_validated(tmp_path):
    base = {"student": {"path": "x"}, "data": {"name": "text", "train_file": str(tmp_path / "t.txt")},
            "distillation": {"strategy": "causal_lm"}}
    (tmp_path / "t.txt").write_text("hello\n")
    config = ExperimentConfig.from_dict({**base, "teacher": {"server": "http://h:1/v1", "model": "m", "top_k": 8}})
    config.validate()
    assert config.teacher.top_k == 8 and config.teacher.retries == 3
    for teacher, field in (({"server": "h:1", "model": "m"}, "teacher.server"),
                           ({"server": "http://h:1/v1", "model": "m", "top_k": 0}, "teacher.top_k"),
                           ({"server": "http://h:1/v1", "model": "m", "prompt": "tokens"}, "teacher.prompt")):
        with pytest.raises(ConfigError, match=re.escape(field)):
            ExperimentConfig.from_dict({**base, "teacher": teacher}).validate()
    single = {**base, "distillation": {"strategy": "single"}, "data": {"name": "sentiment"},
              "teacher": {"server": "http://h:1/v1", "model": "m"}}
    with pytest.raises(ConfigError, match="teacher.server"):
        ExperimentConfig.from_dict(single).validate()


def _workspace(tmp_path, url, tokenizer):
    """A small random student with SmolLM2's tokenizer, text data, and the YAML of a served-teacher run."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    student = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                           max_position_embeddings=128, tie_word_embeddings=True))
    student.save_pretrained(tmp_path / "student")
    tokenizer.save_pretrained(tmp_path / "student")
    (tmp_path / "train.txt").write_text("\n".join(TEXTS[:12]) + "\n")
    (tmp_path / "dev.txt").write_text("\n".join(TEXTS[12:]) + "\n")
    return {"teacher": {"server": url, "model": MODEL_ALIAS, "top_k": TOP_K},
            "student": {"path": str(tmp_path / "student")},
            "data": {"name": "text", "train_file": str(tmp_path / "train.txt"), "dev_file": str(tmp_path / "dev.txt"),
                     "max_length": 24},
            "training": {"output_dir": str(tmp_path / "out"), "max_steps": 3, "batch_size": 4, "learning_rate": 3e-3,
                         "eval_batch_size": 4, "trackers": [], "progress_bar": False},
            "distillation": {"strategy": "causal_lm", "kd_loss": "forward_kl", "hard_label_weight": 0.0,
                             "temperature": 2.0}}


def _completion_posts(log) -> int:
    return log.read_text().count("POST /v1/completions")


@pytest.mark.slow
def test_cache_build_through_the_server_then_training_from_it(server, smollm2, tmp_path):
    url, log = server
    config = _workspace(tmp_path, url, smollm2[1])
    config["training"]["teacher_cache"] = str(tmp_path / "cache")
    path = tmp_path / "served.yaml"
    path.write_text(yaml.safe_dump(config))
    before = _completion_posts(log)
    built = _summary(_cli("cache-teacher", path))
    assert built["top_k"] == TOP_K and built["examples"] == 12 and built["shards_written"] == 1
    assert _completion_posts(log) - before >= 12  # every example was scored by the server
    info = json.loads((tmp_path / "cache" / "cache_info.json").read_text())
    assert info["fingerprint"]["temperature"] == 2.0 and info["fingerprint"]["top_k"] == TOP_K
    before = _completion_posts(log)
    trained = _summary(_cli("train", path))  # from the cache: the server is not asked again
    assert trained["global_step"] == 3 and math.isfinite(trained["eval"]["perplexity"])
    assert _completion_posts(log) == before
    config["teacher"]["model"] = "another"  # the cache was built for the served model it names
    path.write_text(yaml.safe_dump(config))
    stale = _cli("train", path)
    assert stale.returncode == 2 and "teacher's weights differ" in stale.stderr


@pytest.mark.slow
def test_on_policy_steps_are_scored_by_the_server(server, smollm2, tmp_path):
    url, log = server
    config = _workspace(tmp_path, url, smollm2[1])
    lines = [json.dumps({"prompt": t.split(",")[0].split(" and ")[0] + ":", "text": " " + t}) for t in TEXTS]
    (tmp_path / "train.jsonl").write_text("\n".join(lines[:12]) + "\n")
    (tmp_path / "dev.jsonl").write_text("\n".join(lines[12:]) + "\n")
    config["data"].update(train_file=str(tmp_path / "train.jsonl"), dev_file=str(tmp_path / "dev.jsonl"),
                          prompt_column="prompt", text_column="text")
    config["distillation"]["strategy_options"] = {"lmbda": 1.0, "max_new_tokens": 6}
    path = tmp_path / "on_policy.yaml"
    path.write_text(yaml.safe_dump(config))
    before = _completion_posts(log)
    summary = _summary(_cli("train", path))
    assert summary["global_step"] == 3 and math.isfinite(summary["eval"]["perplexity"])
    # probe + 3 on-policy micro-batches of 4 sampled sequences, each scored by the server
    assert _completion_posts(log) - before >= 3 * 4
