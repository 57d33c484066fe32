"""Zero-shot accuracy through lm-eval equals a brute-force greedy check; local files only."""

import json

import numpy as np
import pytest
import torch

from workbench.core import zeroshot
from workbench.core.models import forward_logits, model_max_length
from workbench.core.tokenizers import ByteTokenizer
from workbench.core.zeroshot import (
    build_lastword_task,
    evaluate_zeroshot,
    hf_tokenizer,
    lastword_examples,
    load_task_config,
)

TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: loglikelihood
test_split: test
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{target}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def brute_force(model, tokenizer, examples, *, space=False):
    """acc by definition: every continuation token is the argmax given what precedes it.

    Continuation tokens = encode(context + continuation)[len(encode(context)):]; inputs
    longer than max_length + 1 keep their last max_length + 1 tokens.
    """
    tok = hf_tokenizer(tokenizer)
    max_length = model_max_length(model)
    hits = []
    with torch.no_grad():
        for ex in examples:
            cont = (" " if space else "") + ex["target"]
            whole = tok.encode(ex["context"] + cont)
            target = whole[len(tok.encode(ex["context"])):]
            ids = whole[-(max_length + 1):][:-1]
            logits = forward_logits(model, torch.tensor([ids]))[0]
            hits.append(logits[-len(target):].argmax(-1).tolist() == target)
    return hits


def write_task(folder, name, examples):
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
    path = folder / f"{name}.yaml"
    path.write_text(TASK_YAML.format(name=name, data=f"{name}.jsonl"))  # relative path
    return path


def test_byte_tokenizer_fast_has_the_same_ids():
    text = "Pruning 50 % — naïve 日本 text\n\n  spaces"
    fast = hf_tokenizer(ByteTokenizer())
    assert fast.encode(text) == ByteTokenizer().encode(text)
    assert fast.decode(fast.encode(text)) == text
    assert fast.pad_token_id == ByteTokenizer.pad_token_id


def test_accuracy_equals_brute_force_greedy(tiny_llama, tmp_path, one_thread):
    model, tok = tiny_llama
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "mat", "dog", "ran", "far", "away", "home"]
    examples = []
    with torch.no_grad():
        while len(examples) < 8:
            context = " ".join(rng.choice(words, size=int(rng.integers(3, 9))))
            ids = tok.encode(context)
            greedy = []
            for _ in range(2):  # the model's own 2-byte greedy continuation
                greedy.append(int(forward_logits(model, torch.tensor([ids + greedy]))[0, -1]
                                  .argmax()))
            printable = all(32 <= g < 127 for g in greedy)
            if len(examples) % 2 == 0 and printable:  # a hit by construction
                examples.append(dict(context=context, target=bytes(greedy).decode()))
            elif len(examples) % 2 == 1:  # almost surely a miss
                examples.append(dict(context=context, target=" " + str(rng.choice(words))))
    path = write_task(tmp_path, "tiny_greedy", examples)
    res = evaluate_zeroshot(model, tok, path, batch_size=3, samples=True)
    expected = brute_force(model, tok, examples)
    got = [bool(s["acc"]) for s in sorted(res.samples, key=lambda s: s["doc_id"])]
    assert got == expected
    assert res.n == len(examples) and res.task == "tiny_greedy"
    assert res.accuracy == pytest.approx(np.mean(expected))
    assert 0 < res.accuracy < 1  # hits and misses both present: the check can fail
    assert evaluate_zeroshot(model, tok, path, limit=2).n == 2


def test_missing_files_and_hub_tasks_are_clear_errors(tmp_path, tiny_llama):
    model, tok = tiny_llama
    missing = tmp_path / "nope.yaml"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        evaluate_zeroshot(model, tok, missing)
    with pytest.raises(FileNotFoundError, match="no_such_task.yaml.*shipped tasks"):
        load_task_config("no_such_task")
    path = write_task(tmp_path, "t", [dict(context="a b", target="c")])
    (tmp_path / "t.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "t.jsonl")):
        load_task_config(path)
    hub = tmp_path / "hub.yaml"
    hub.write_text("task: hub\ndataset_path: EleutherAI/lambada_openai\noutput_type: "
                   "loglikelihood\ntest_split: test\n")
    with pytest.raises(ValueError, match="local files only"):
        load_task_config(hub)
    with pytest.raises(ValueError, match="limit"):
        evaluate_zeroshot(model, tok, path, limit=0)


def test_lastword_examples_follow_the_lambada_rule():
    doc = ("Alice met Bob at the market on a cold morning in the old town square. They talked "
           "for an hour about the weather and the harvest and then Alice went home to see Bob. "
           "The next day it rained on the market. It rained.")
    ex = lastword_examples([doc], max_context_words=40, min_context_words=5)
    # "square" does not occur before it; "Bob", "market" and "rained" do.
    assert [e["target"] for e in ex] == ["Bob", "market", "rained"]
    assert ex[0]["context"].endswith("went home to see")
    assert ex[0]["context"].startswith("Alice met Bob")
    # the rule applies to the cut context: within 10 words only "rained" was seen before
    short = lastword_examples([doc], max_context_words=10, min_context_words=5)
    assert [e["target"] for e in short] == ["rained"]
    assert len(short[0]["context"].split(" ")) == 10


def test_build_is_deterministic(tmp_path):
    a = build_lastword_task("lee", split="validation", n_examples=20, folder=tmp_path / "a")
    b = build_lastword_task("lee", split="validation", n_examples=20, folder=tmp_path / "b")
    assert a.with_suffix(".jsonl").read_bytes() == b.with_suffix(".jsonl").read_bytes()
    rows = [json.loads(x) for x in a.with_suffix(".jsonl").read_text().splitlines()]
    assert 0 < len(rows) <= 20
    cfg = load_task_config(a)
    assert cfg["dataset_kwargs"]["data_files"]["test"] == str(a.with_suffix(".jsonl"))


@pytest.mark.slow
def test_shipped_task_matches_its_builder_and_brute_force(tmp_path, smollm2):
    built = build_lastword_task(folder=tmp_path)
    shipped = zeroshot.task_path(zeroshot.DEFAULT_TASK)
    assert built.with_suffix(".jsonl").read_bytes() == shipped.with_suffix(".jsonl").read_bytes()
    model, tok = smollm2
    examples = [json.loads(x) for x in shipped.with_suffix(".jsonl").read_text().splitlines()]
    res = evaluate_zeroshot(model, tok, limit=12, samples=True)
    got = [bool(s["acc"]) for s in sorted(res.samples, key=lambda s: s["doc_id"])]
    assert got == brute_force(model, tok, examples[:12], space=True)


# ----------------------------------------------------------------------------- 7-task card
#: Two examples per task in each task's hub schema (the columns lm-eval's YAML reads).
STANDARD_DOCS = {
    "boolq": [dict(question="is the sky blue", passage="The sky is blue on a clear day.",
                   idx=0, label=1),
              dict(question="is ice hot", passage="Ice is frozen water and cold.", idx=1,
                   label=0)],
    "rte": [dict(sentence1="A dog runs in the park.", sentence2="An animal runs.", idx=0,
                 label=0),
            dict(sentence1="The man sleeps.", sentence2="The man is running.", idx=1,
                 label=1)],
    "hellaswag": [dict(ind=0, activity_label="Cooking", ctx_a="A man cracks eggs into a bowl.",
                       ctx_b="he", ctx="", endings=["whisks them.", "flies away over the sea.",
                                                    "sings.", "reads a long book aloud."],
                       source_id="x", split="val", split_type="indomain", label="0"),
                  dict(ind=1, activity_label="Running [title] fast",
                       ctx_a="A woman ties her shoes.", ctx_b="she", ctx="",
                       endings=["starts to run.", "eats soup.", "swims.", "paints a wall."],
                       source_id="y", split="val", split_type="indomain", label="0")],
    "winogrande": [dict(sentence="The cup fell off the table because _ was slippery.",
                        option1="the cup", option2="the table", answer="1"),
                   dict(sentence="Sam gave Tom a gift because _ was kind.", option1="Sam",
                        option2="Tom", answer="1")],
    "arc_easy": [dict(id="a1", question="What do plants need to grow?",
                      choices=dict(text=["light", "darkness and cold", "salt", "noise"],
                                   label=["A", "B", "C", "D"]), answerKey="A"),
                 dict(id="a2", question="Which is a planet?",
                      choices=dict(text=["Mars", "the Moon", "a comet"],
                                   label=["1", "2", "3"]), answerKey="1")],
    "arc_challenge": [dict(id="c1", question="Water boils at sea level at?",
                           choices=dict(text=["100 C", "10 C", "1000 degrees C"],
                                        label=["A", "B", "C"]), answerKey="A"),
                      dict(id="c2", question="Which gas do we breathe out?",
                           choices=dict(text=["carbon dioxide", "gold", "iron"],
                                        label=["A", "B", "C"]), answerKey="A")],
    "openbookqa": [dict(id="o1", question_stem="The sun is a",
                        choices=dict(text=["star", "planet", "moon", "rock"],
                                     label=["A", "B", "C", "D"]), answerKey="A"),
                   dict(id="o2", question_stem="Fish live in",
                        choices=dict(text=["water", "fire", "sand", "air"],
                                     label=["A", "B", "C", "D"]), answerKey="A")],
}


def write_standard_files(folder):
    """Each task's two docs as ``<task>.jsonl`` (the json builder lm-eval reads)."""
    for task, docs in STANDARD_DOCS.items():
        (folder / f"{task}.jsonl").write_text(
            "".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    return folder


def loglik(model, tokenizer, context, continuation):
    """Sum log p(continuation tokens | context) by one forward (byte tokenizer)."""
    ctx, cont = tokenizer.encode(context), tokenizer.encode(continuation)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(forward_logits(model, ids)[0].double(), -1)
    return float(sum(logp[len(ctx) - 1 + k, t] for k, t in enumerate(cont)))


def test_seven_task_card_runs_lm_eval_definitions_and_reports_acc_and_acc_norm(
        tiny_llama, tmp_path, one_thread):
    model, tok = tiny_llama
    rows = zeroshot.evaluate_zeroshot_card(model, tok, write_standard_files(tmp_path),
                                           batch_size=4)
    by_task = {r["task"]: r for r in rows}
    assert list(by_task) == list(zeroshot.STANDARD_TASKS)
    for t, r in by_task.items():
        assert r["n"] == 2, t
        assert 0.0 <= r["acc"] <= 1.0 and 0.0 <= r["acc_norm"] <= 1.0, t
        assert r["reported_metric_wanda"] == "acc" and r["zeroshot_card"] == "zeroshot-7"
        assert r["lm_eval_version"] == zeroshot.lm_eval_version()
    # ARC-Easy by definition: lm-eval's prompt "Question: q\nAnswer:" + " " + choice;
    # acc = argmax of the summed loglikelihood, acc_norm = argmax of it / len(choice).
    acc = norm = 0.0
    for d in STANDARD_DOCS["arc_easy"]:
        ctx = f"Question: {d['question']}\nAnswer:"
        lls = np.array([loglik(model, tok, ctx, " " + c) for c in d["choices"]["text"]])
        lens = np.array([len(c) for c in d["choices"]["text"]], dtype=float)
        gold = d["choices"]["label"].index(d["answerKey"])
        acc += float(np.argmax(lls) == gold) / 2
        norm += float(np.argmax(lls / lens) == gold) / 2
    assert by_task["arc_easy"]["acc"] == pytest.approx(acc)
    assert by_task["arc_easy"]["acc_norm"] == pytest.approx(norm)


def test_seven_task_card_missing_file_names_task_and_expected_file(tmp_path, tiny_llama):
    write_standard_files(tmp_path)
    (tmp_path / "hellaswag.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="hellaswag.*Rowan/hellaswag"):
        zeroshot.evaluate_zeroshot_card(*tiny_llama, tmp_path)
    with pytest.raises(ValueError, match="not in card"):
        zeroshot.evaluate_zeroshot_card(*tiny_llama, tmp_path, tasks=["piqa"])


def test_standard_config_is_lm_evals_own_with_local_data(tmp_path):
    write_standard_files(tmp_path)
    cfg = zeroshot.standard_task_config("hellaswag", tmp_path / "hellaswag.jsonl")
    assert callable(cfg["process_docs"])  # lm-eval's own preprocessing kept
    assert cfg["dataset_path"] == "json" and cfg["validation_split"] == "validation"
    assert {m["metric"] for m in cfg["metric_list"]} == {"acc", "acc_norm"}
    arc = zeroshot.standard_task_config("arc_challenge", tmp_path / "arc_challenge.jsonl")
    assert arc["test_split"] == "test" and arc["doc_to_text"].startswith("Question:")
# ----------------------------------------------------------------------------- task files are data
HELPERS = """import pathlib
pathlib.Path({marker!r}).write_text("imported")


def keep_two(dataset):
    pathlib.Path({marker!r}).write_text("called")
    return dataset.select(range(2))
"""


def _exploit_task(folder, *, extra="", source="json"):
    """A task whose ``process_docs`` is ``!function helpers.keep_two``; importing
    helpers.py writes a marker file."""
    marker = folder / "marker.txt"
    (folder / "helpers.py").write_text(HELPERS.format(marker=str(marker)))
    path = write_task(folder, "exploit", [dict(context=f"a b {i}", target="c") for i in range(5)])
    text = path.read_text().replace("dataset_path: json", f"dataset_path: {source}")
    path.write_text(text + "process_docs: !function helpers.keep_two\n" + extra)
    return path, marker


def test_function_tag_is_refused_without_trust_and_imports_nothing(tmp_path, tiny_llama):
    model, tok = tiny_llama
    path, marker = _exploit_task(tmp_path)
    with pytest.raises(ValueError, match=r"runs Python code \(process_docs: !function "
                                         r"helpers.keep_two\).*trust_task_code=True"):
        evaluate_zeroshot(model, tok, path)
    assert not marker.exists()


def test_function_tag_in_a_non_local_task_is_not_imported_before_validation(tmp_path):
    path, marker = _exploit_task(tmp_path, source="EleutherAI/lambada_openai")
    with pytest.raises(ValueError, match="local files only"):
        load_task_config(path, trust_task_code=True)
    assert not marker.exists()


def test_function_tag_runs_with_trust_task_code(tmp_path, tiny_llama, one_thread):
    model, tok = tiny_llama
    path, marker = _exploit_task(tmp_path)
    res = evaluate_zeroshot(model, tok, path, trust_task_code=True)
    assert marker.read_text() == "called"
    assert res.n == 2  # keep_two was applied to the 5 documents


def test_trust_task_code_must_be_a_bool(tmp_path):
    path, marker = _exploit_task(tmp_path)
    with pytest.raises(TypeError, match="trust_task_code"):
        load_task_config(path, trust_task_code="yes")
    assert not marker.exists()


@pytest.mark.parametrize("template", [
    "{{ cycler.__init__.__globals__.os.system('touch MARKER') }}",
    "{{ self.__init__.__globals__.__builtins__.open('MARKER', 'w').write('x') }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}{{ context }}",
])
def test_template_reaching_for_globals_is_refused(tmp_path, tiny_llama, template):
    model, tok = tiny_llama
    marker = tmp_path / "MARKER"
    path = write_task(tmp_path, "jinja", [dict(context="a b", target="c")])
    text = path.read_text().replace('doc_to_text: "{{context}}"',
                                    f'doc_to_text: "{template.replace("MARKER", str(marker))}"')
    path.write_text(text)
    with pytest.raises(ValueError, match=r"jinja.yaml: doc_to_text was refused by the Jinja "
                                         r"sandbox.*unsafe"):
        evaluate_zeroshot(model, tok, path)
    assert not marker.exists()


def test_python_object_tags_are_refused(tmp_path):
    marker = tmp_path / "marker"
    path = write_task(tmp_path, "obj", [dict(context="a b", target="c")])
    path.write_text(path.read_text() + f"metadata: !!python/object/apply:os.system "
                                       f"['touch {marker}']\n")
    with pytest.raises(ValueError, match=r"obj.yaml line \d+: .*python/object/apply.*data"):
        load_task_config(path)
    assert not marker.exists()


def test_unknown_metric_is_refused_before_evaluate_reaches_the_network(tmp_path):
    path = write_task(tmp_path, "m", [dict(context="a b", target="c")])
    path.write_text(path.read_text().replace("metric: acc", "metric: accuracy"))
    with pytest.raises(ValueError, match=r"metric_list\[0\].metric='accuracy'.*allowed: "
                                         r"\[.*'acc'"):
        load_task_config(path)


def test_metric_not_computed_is_an_error_not_nan(tmp_path, tiny_llama):
    """acc_norm is a built-in metric that a loglikelihood task never produces."""
    model, tok = tiny_llama
    path = write_task(tmp_path, "nan", [dict(context="a b", target="c")])
    path.write_text(path.read_text().replace("metric: acc", "metric: acc_norm"))
    with pytest.raises(RuntimeError, match="metric 'acc_norm' could not be computed"):
        evaluate_zeroshot(model, tok, path)


def test_missing_split_and_empty_data_are_named(tmp_path):
    path = write_task(tmp_path, "s", [dict(context="a b", target="c")])
    path.write_text(path.read_text().replace("test_split: test", "test_split: validation"))
    with pytest.raises(ValueError, match=r"test_split='validation' is not a split.*\['test'\]"):
        load_task_config(path)
    empty = write_task(tmp_path, "e", [])
    with pytest.raises(ValueError, match=r"e.jsonl of task .* is empty"):
        load_task_config(empty)
