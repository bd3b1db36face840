import json
import shutil

import pytest

from synthir.beir import passage_text
from synthir.config import GenerateParams, VerifyParams
from synthir.data.sampling import sample_ids
from synthir.errors import ConfigError, SynthirError
from synthir.fileio import read_jsonl
from synthir.llm.base import Completion
from synthir.llm.cached import CachedBackend
from synthir.llm.store import CompletionCache
from synthir.prompting import load_template
from synthir.synth.pipeline import generate
from synthir.synth.verify import verify_outputs
from tests.conftest import MINILM, REPO, write_beir
from tests.synth.fakes import ScriptedLLM

CORPUS = [
    {"_id": f"d{i}", "title": f"Topic{i}", "text": f"Document {i} explains subject{i} in detail."} for i in range(12)
]
QUERIES = [
    {"_id": "t1", "text": "what explains subject1"},
    {"_id": "t2", "text": "is subject2 explained"},
    {"_id": "e1", "text": "subject3 question"},
]
QRELS = {"train": [("t1", "d1", 1), ("t2", "d2", 1)], "test": [("e1", "d3", 1)]}


def params(**overrides) -> GenerateParams:
    base = {
        "llm": {"backend": "hf", "model": "org/unused", "batch_size": 4},
        "seed": 5,
        "doc2query": {"density": 2, "oversample": 2, "few_shot": 1},
        "syntriever": {"enabled": True},
    }
    return GenerateParams.model_validate({**base, **overrides})


@pytest.fixture
def data(tmp_path):
    return write_beir(tmp_path / "data", CORPUS, QUERIES, QRELS)


def cached(llm, tmp_path):
    return CachedBackend(llm, CompletionCache(tmp_path / "llm.sqlite"), batch_size=4)


def run(data, tmp_path, llm, doc_ids, p=None, name="out"):
    backend = cached(llm, tmp_path)
    generate(p or params(), data, doc_ids, tmp_path / name, tmp_path / f"{name}.json", backend=backend)
    return backend.stats, {f.name: f.read_text() for f in sorted((tmp_path / name).iterdir())}


def test_outputs_carry_provenance_and_few_shot_ids(data, tmp_path):
    llm = ScriptedLLM()
    run(data, tmp_path, llm, ["d4", "d5"])
    queries = list(read_jsonl(tmp_path / "out" / "doc2query.jsonl"))
    assert [q["doc_id"] for q in queries] == ["d4", "d4", "d5", "d5"]  # density 2 per document
    first = queries[0]
    assert first["id"] == "d4-q0" and first["query"].startswith("what about")
    provenance = first["provenance"]
    assert provenance["model"] == "scripted/llm" and provenance["backend"] == "scripted"
    assert provenance["server"] is None  # a local backend; the openai backend names its server here
    assert provenance["template"].startswith("doc2query@") and provenance["sampling"]["temperature"] == 0.7
    assert provenance["few_shot_ids"] in (["t1"], ["t2"]) and isinstance(provenance["sample"], int)
    few_shot = (tmp_path / "out" / "few_shot_ids.txt").read_text().split()
    assert few_shot == provenance["few_shot_ids"]  # train-split ids, written out for exclusion
    assert "Document 1 explains" in json.dumps(llm.requests[0].messages) or "Document 2" in json.dumps(
        llm.requests[0].messages
    )
    negatives = list(read_jsonl(tmp_path / "out" / "query_negative.jsonl"))
    assert [n["query_id"] for n in negatives] == [q["id"] for q in queries]
    sets = list(read_jsonl(tmp_path / "out" / "syntriever.jsonl"))
    assert [s["query_id"] for s in sets] == ["t1", "t2"]
    assert set(sets[0]) >= {"cot", "positive", "negative", "positive_doc_ids"}
    assert sets[0]["positive_doc_ids"] == ["d1"]
    summary = json.loads((tmp_path / "out.json").read_text())
    assert summary["tasks"]["doc2query"]["records"] == 4 and summary["failed"] == 0


def test_identical_rerun_makes_no_calls(data, tmp_path):
    first_stats, first = run(data, tmp_path, ScriptedLLM(), ["d4", "d5"], name="a")
    llm = ScriptedLLM()
    stats, second = run(data, tmp_path, llm, ["d4", "d5"], name="b")
    assert first_stats.calls > 0 and stats.calls == 0 and llm.requests == []
    assert second == first


def test_raising_the_fraction_calls_only_for_new_documents(data, tmp_path):
    ids = [d["_id"] for d in CORPUS]
    quarter, half = sample_ids(ids, 0.25, 1), sample_ids(ids, 0.5, 1)
    p = params(query_negative={"enabled": False}, syntriever={"enabled": False})
    run(data, tmp_path, ScriptedLLM(), quarter, p, "quarter")
    llm = ScriptedLLM()
    run(data, tmp_path, llm, half, p, "half")
    asked = {doc for r in llm.requests for doc in half if f"Document {doc[1:]} explains" in r.messages[-1]["content"]}
    assert asked == set(half) - set(quarter)
    assert len(llm.requests) == 4 * len(asked)  # density 2 x oversample 2, one request per sample


class FailingLLM(ScriptedLLM):
    def generate(self, requests):
        self.requests += requests
        return [Completion.failure("HTTP 500") for _ in requests]


def test_too_many_failures_fail_the_stage_and_write_nothing(data, tmp_path):
    (tmp_path / "out.json").write_text("previous run's metrics\n")
    with pytest.raises(
        SynthirError, match=r"LLM requests failed \(> generate.max_failure_rate 0.05\); first error: HTTP 500"
    ):
        run(data, tmp_path, FailingLLM(), ["d4"])
    assert not (tmp_path / "out").exists()
    assert (tmp_path / "out.json").read_text() == "previous run's metrics\n"


def test_zero_shot_on_a_corpus_without_labels(tmp_path):
    folder = write_beir(tmp_path / "corpus-only", CORPUS, queries=[], qrels={})
    (folder / "queries.jsonl").unlink()
    zero_shot = params(doc2query={"few_shot": 0}, syntriever={"enabled": False})
    llm = ScriptedLLM()
    run(folder, tmp_path, llm, ["d4", "d5"], zero_shot)
    assert len(llm.requests[0].messages) == 2  # system + the passage: no example turns
    queries = list(read_jsonl(tmp_path / "out" / "doc2query.jsonl"))
    assert [q["doc_id"] for q in queries] == ["d4", "d5"] and queries[0]["provenance"]["few_shot_ids"] == []
    assert (tmp_path / "out" / "few_shot_ids.txt").read_text() == ""
    for overrides, key in (
        ({"doc2query": {"few_shot": 2}, "syntriever": {"enabled": False}}, "generate.doc2query.few_shot: 2"),
        ({"doc2query": {"few_shot": 0}}, "generate.syntriever.enabled: True"),
    ):
        with pytest.raises(ConfigError, match=rf"{key} needs labeled train queries, and .* has no qrels/train.tsv"):
            run(folder, tmp_path, ScriptedLLM(), ["d4"], params(**overrides), "refused")
    assert not (tmp_path / "refused").exists()


def test_an_override_prompts_folder_is_used_and_recorded(data, tmp_path):
    folder = tmp_path / "prompts"
    shutil.copytree(REPO / "src" / "synthir" / "prompts" / "generate", folder)
    edited = (folder / "doc2query.txt").read_text().replace("Reply with the query only.", "Reply tersely.")
    (folder / "doc2query.txt").write_text(edited)
    llm = ScriptedLLM()
    p = params(prompts_dir=str(folder), syntriever={"enabled": False})
    run(data, tmp_path, llm, ["d4"], p)
    assert "Reply tersely." in llm.requests[0].messages[0]["content"]
    template = next(read_jsonl(tmp_path / "out" / "doc2query.jsonl"))["provenance"]["template"]
    assert template == load_template("doc2query", folder).version != load_template("doc2query").version
    (folder / "query_negative.txt").unlink()
    with pytest.raises(ConfigError, match=r"query_negative.txt: not found; a prompts folder must hold every"):
        run(data, tmp_path, ScriptedLLM(), ["d4"], p, "incomplete")


def test_verify_relabels_scores_and_round_trips(data, tmp_path, tiny_encoder):
    generated = tmp_path / "generated"
    generated.mkdir()
    queries = [
        ("d4-q0", "d4", "RELEVANT subject4"),
        ("d5-q0", "d5", "subject5 question"),
        ("d6-q0", "d6", "RELEVANT subject6"),
    ]
    (generated / "doc2query.jsonl").write_text(
        "".join(json.dumps({"id": i, "doc_id": d, "query": q}) + "\n" for i, d, q in queries)
    )
    negatives = [("d4-q0", "a plain miss"), ("d5-q0", "another miss"), ("d6-q0", "RELEVANT: answers it after all")]
    (generated / "query_negative.jsonl").write_text(
        "".join(json.dumps({"id": f"{i}-neg", "query_id": i, "query": "q", "negative": n}) + "\n" for i, n in negatives)
    )
    (generated / "syntriever.jsonl").write_text(
        json.dumps({"id": "t1", "query": "q", "positive": "RELEVANT passage", "negative": "neg one"})
        + "\n"
        + json.dumps({"id": "t2", "query": "q", "positive": "made-up passage", "negative": "neg two"})
        + "\n"
    )
    verify = VerifyParams.model_validate(
        {
            "judge": {"backend": "hf", "model": "org/unused"},
            "min_query_score": 0.0,
            "round_trip": {"model": tiny_encoder, "k": len(CORPUS)},
        }
    )
    llm = ScriptedLLM()
    summary = verify_outputs(verify, data, generated, tmp_path / "verified", tmp_path / "v.json", cached(llm, tmp_path))
    kept = list(read_jsonl(tmp_path / "verified" / "doc2query.jsonl"))
    assert [q["id"] for q in kept] == ["d4-q0", "d6-q0"] and kept[0]["score"] == 2.0
    assert kept[0]["round_trip_rank"] >= 1
    # d5's negative goes with its query; d6's "negative" answers its query, so it is dropped
    assert [n["query_id"] for n in read_jsonl(tmp_path / "verified" / "query_negative.jsonl")] == ["d4-q0"]
    assert summary["negatives_judged_relevant"] == 1
    sets = {s["id"]: s for s in read_jsonl(tmp_path / "verified" / "syntriever.jsonl")}
    assert sets["t1"]["positive"] == "RELEVANT passage" and not sets["t1"]["relabeled"]
    assert sets["t2"]["relabeled"] and "positive" not in sets["t2"]
    assert sets["t2"]["negatives"] == ["neg two", "made-up passage"]
    assert summary["dropped_by_score"] == 1 and summary["relabeled"] == 1
    # each judging task's cost is recorded for the report: prompts, seconds and the LLM's counters
    assert {name: task["prompts"] for name, task in summary["tasks"].items()} == {
        "score_queries": 3,
        "judge_negatives": 2,  # d5's query was dropped by its score, so its negative is not judged
        "relabel": 2,
    }
    assert summary["tasks"]["score_queries"]["llm"]["calls"] == 3 and summary["tasks"]["relabel"]["seconds"] >= 0
    assert set(summary["llm"]) >= {"tokens_in", "tokens_cached", "tokens_out"}


def test_round_trip_drops_queries_whose_source_is_not_retrieved(data, tmp_path):
    """A query that is its source's own text retrieves it first; one that is another document's text does not.
    (The real MiniLM: the tiny random encoder embeds every text alike.)"""
    generated = tmp_path / "generated"
    generated.mkdir()
    text = {d["_id"]: passage_text(d) for d in CORPUS}
    rows = [
        {"id": f"d{i}-q0", "doc_id": f"d{i}", "query": text[f"d{i}" if i % 2 == 0 else f"d{(i + 1) % 12}"]}
        for i in range(12)
    ]
    (generated / "doc2query.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    verify = VerifyParams.model_validate(
        {
            "judge": {"backend": "hf", "model": "org/unused"},
            "score_queries": False,
            "round_trip": {"model": MINILM, "k": 1},
        }
    )
    summary = verify_outputs(verify, data, generated, tmp_path / "verified", tmp_path / "v.json", None)
    kept = list(read_jsonl(tmp_path / "verified" / "doc2query.jsonl"))
    assert [q["id"] for q in kept] == [f"d{i}-q0" for i in range(0, 12, 2)]
    assert [q["round_trip_rank"] for q in kept] == [1] * 6
    assert (summary["queries_kept"], summary["dropped_by_round_trip"]) == (6, 6)


def test_syntriever_sets_pass_unjudged_when_relabeling_is_off(data, tmp_path):
    generated = tmp_path / "generated"
    generated.mkdir()
    sets = [
        {"id": "t1", "query": "q", "positive": "made-up passage", "negative": "neg one"},
        {"id": "t2", "query": "q"},
    ]
    (generated / "syntriever.jsonl").write_text("".join(json.dumps(s) + "\n" for s in sets))
    verify = VerifyParams.model_validate(
        {"judge": {"backend": "hf", "model": "org/unused"}, "relabel": False, "round_trip": {"enabled": False}}
    )
    llm = ScriptedLLM()
    summary = verify_outputs(verify, data, generated, tmp_path / "verified", tmp_path / "v.json", cached(llm, tmp_path))
    out = {s["id"]: s for s in read_jsonl(tmp_path / "verified" / "syntriever.jsonl")}
    assert out["t1"]["positive"] == "made-up passage" and out["t1"]["negatives"] == ["neg one"]
    assert out["t1"]["positive_score"] is None and not out["t1"]["relabeled"]
    assert summary["relabeled"] == 0 and llm.scored == []


def gecko_inputs(data, generated):
    """A corpus where only d7 says RELEVANT, and one pseudo-query written from d3 that BM25 matches to d7."""
    corpus = [dict(d) for d in CORPUS]
    corpus[7]["text"] += " RELEVANT"
    folder = write_beir(data, corpus, QUERIES, QRELS)
    generated.mkdir()
    (generated / "doc2query.jsonl").write_text(json.dumps({"id": "d3-q0", "doc_id": "d3", "query": "subject7"}) + "\n")
    return folder, generated


def test_gecko_relabeling_picks_the_judges_best_candidate_and_its_worst_as_negative(data, tmp_path, tiny_encoder):
    """The scripted judge says yes only to passages containing RELEVANT: d7's, not the query's source d3."""
    folder, generated = gecko_inputs(tmp_path / "gecko-data", tmp_path / "generated")
    verify = VerifyParams.model_validate(
        {
            "judge": {"backend": "hf", "model": "org/unused"},
            "score_queries": False,
            "round_trip": {"enabled": False},
            "gecko": {"enabled": True, "k": 4, "model": tiny_encoder},
        }
    )
    llm = ScriptedLLM()
    summary = verify_outputs(
        verify, folder, generated, tmp_path / "verified", tmp_path / "v.json", cached(llm, tmp_path)
    )
    (record,) = read_jsonl(tmp_path / "verified" / "doc2query.jsonl")
    assert record["positive_doc_id"] == "d7" and record["doc_id"] == "d3"  # BM25 finds d7 for "subject7"
    assert next(iter(record["gecko_scores"])) == "d3" and len(record["gecko_scores"]) in (4, 5)  # the source, + top 4
    assert record["hard_negative_id"] not in ("d7",) and record["gecko_scores"][record["hard_negative_id"]] == -2.0
    assert summary["gecko_positive_changed"] == 1 and summary["tasks"]["gecko"]["prompts"] == len(llm.scored)

    from synthir.config import TriplesParams
    from synthir.triples.build import build

    params = TriplesParams.model_validate({"sources": ["doc2query"], "negatives": {"method": "bm25", "rank_from": 0}})
    build(params, folder, tmp_path / "verified", tmp_path / "t.jsonl", tmp_path / "t.json")
    (example,) = read_jsonl(tmp_path / "t.jsonl")
    assert example["positive_ids"] == ["d7"] and example["negative_ids"][0] == record["hard_negative_id"]
    assert "d3" not in example["negative_ids"]  # the source is never mined as a negative


def test_relabel_positive_keeps_the_source_on_ties():
    from synthir.synth.verify import relabel_positive

    record = {"id": "x", "doc_id": "b"}
    assert relabel_positive(record, ["b", "a", "c"], [1.0, 1.0, -3.0])["positive_doc_id"] == "b"
    assert relabel_positive(record, ["b", "a", "c"], [1.0, 1.0, -3.0])["hard_negative_id"] == "c"
    assert "hard_negative_id" not in relabel_positive(record, ["b"], [0.5])
    assert relabel_positive(record, ["b", "a", "c"], [1.0, 1.0, -3.0])["relevant_ids"] == ["a"]  # never mined
    worse_source = relabel_positive(record, ["b", "a", "c"], [-5.0, 1.0, -3.0])
    assert (worse_source["positive_doc_id"], worse_source["hard_negative_id"]) == ("a", "c")
    all_relevant = relabel_positive(record, ["b", "a", "c"], [2.0, 1.0, 0.5])  # a yes everywhere: no negative
    assert "hard_negative_id" not in all_relevant and all_relevant["relevant_ids"] == ["a", "c"]


class GPUJudge(ScriptedLLM):
    """Test double: a judge whose engine "runs on a GPU" and logs when it scores and when it is stopped."""

    device = "cuda"

    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events

    def score_yes_no(self, prompts):
        self.events.append("judge")
        return super().score_yes_no(prompts)

    def close(self) -> None:
        self.events.append("stop engine")


def gpu_verify(tmp_path, monkeypatch, tiny_encoder, device: str):
    """verify on a faked GPU (test double: no device check; the encoders load on the CPU), with every judging task
    and a Gecko step; returns the order of judge calls, engine stops and encoder loads."""
    import synthir.devices
    import synthir.retrieval

    events: list[str] = []
    real = synthir.retrieval.load_encoder
    monkeypatch.setattr(synthir.devices, "check_device", lambda *a, **k: None)
    monkeypatch.setattr(
        synthir.retrieval, "load_encoder", lambda ref, **k: events.append("load encoder") or real(ref, device="cpu")
    )
    folder, generated = gecko_inputs(tmp_path / "data", tmp_path / "generated")
    (generated / "query_negative.jsonl").write_text(
        json.dumps({"id": "n", "query_id": "d3-q0", "query": "subject7", "negative": "a miss"}) + "\n"
    )
    verify = VerifyParams.model_validate(
        {
            "judge": {"backend": "hf", "model": "org/unused"},
            "device": device,
            "round_trip": {"model": tiny_encoder, "k": len(CORPUS)},
            "gecko": {"enabled": True, "k": 3, "model": tiny_encoder},
        }
    )
    verify_outputs(verify, folder, generated, tmp_path / "v", tmp_path / "v.json", cached(GPUJudge(events), tmp_path))
    return events


def test_verify_stops_a_gpu_judge_before_its_encoders_load(tmp_path, monkeypatch, tiny_encoder):
    """A vLLM judge holds 90% of the GPU: the encoders (round trip, Gecko) load only after it stopped, all between
    the judge's two phases, so the engine restarts once."""
    events = gpu_verify(tmp_path, monkeypatch, tiny_encoder, "cuda")
    assert events == ["judge", "stop engine", "load encoder", "load encoder", "judge", "judge"]


def test_verify_keeps_the_judge_running_when_the_encoders_are_on_the_cpu(tmp_path, monkeypatch, tiny_encoder):
    events = gpu_verify(tmp_path, monkeypatch, tiny_encoder, "cpu")
    assert "stop engine" not in events and events.count("load encoder") == 2


def test_round_trip_and_gecko_encode_with_the_models_prefixes(data, tmp_path, tiny_encoder, monkeypatch):
    """e5 expects `query: ` / `passage: `: the round-trip filter and Gecko's dense candidates add them."""
    import synthir.retrieval

    seen: list[str] = []
    passage_prefixes: list[str] = []
    encode, encode_passages = synthir.retrieval.encode, synthir.retrieval.encode_passages

    def spy(model, texts, batch_size, prefix="", desc=""):
        seen.extend(prefix + t for t in texts if desc != "corpus")
        return encode(model, texts, batch_size, prefix, desc)

    def passages_spy(model, texts, batch_size, prefix="", *args, **kwargs):  # the corpus may come from the cache
        passage_prefixes.append(prefix)
        return encode_passages(model, texts, batch_size, prefix, *args, **kwargs)

    monkeypatch.setattr(synthir.retrieval, "encode", spy)
    monkeypatch.setattr(synthir.retrieval, "encode_passages", passages_spy)
    generated = tmp_path / "generated"
    generated.mkdir()
    (generated / "doc2query.jsonl").write_text(json.dumps({"id": "d3-q0", "doc_id": "d3", "query": "subject3"}) + "\n")
    prefixes = {"query_prefix": "query: ", "passage_prefix": "passage: "}
    verify = VerifyParams.model_validate(
        {
            "judge": {"backend": "hf", "model": "org/unused"},
            "score_queries": False,
            "round_trip": {"model": tiny_encoder, "k": len(CORPUS), **prefixes},
            "gecko": {"enabled": True, "k": 3, "model": tiny_encoder, **prefixes},
        }
    )
    verify_outputs(verify, data, generated, tmp_path / "v", tmp_path / "v.json", cached(ScriptedLLM(), tmp_path))
    assert seen == ["query: subject3"] * 2  # the round trip's, then Gecko's
    assert passage_prefixes == ["passage: "] * 2


def test_shards_are_disjoint_cover_the_sample_and_replay_as_one_run(data, tmp_path):
    """Shards i/3 into their own caches, merged by export and import: the whole run then makes no LLM call and
    writes what an unsharded run writes (ScriptedLLM: a test double of the LLM)."""
    from synthir.llm.completions import export_cache, import_cache
    from synthir.synth.pipeline import generate_shard
    from synthir.synth.shards import Shard

    doc_ids = [d["_id"] for d in CORPUS]
    _, whole = run(data, tmp_path / "whole", ScriptedLLM(), doc_ids)
    files, asked = [], []
    for index in range(3):
        llm = ScriptedLLM()
        backend = cached(llm, tmp_path / f"machine{index}")
        backend.keys_used = set()
        summary = generate_shard(params(), data, doc_ids, Shard(index, 3), backend)
        assert summary["shard"] == f"{index}/3" and summary["failed"] == 0
        asked.append({r.messages[-1]["content"] for r in llm.requests})
        files.append(tmp_path / f"shard{index}.jsonl")
        export_cache(backend.cache, files[-1], keys=backend.keys_used)
        assert not list((tmp_path / f"machine{index}").glob("out*"))  # nothing but the cache is written
    assert all(asked) and not (asked[0] & asked[1] or asked[0] & asked[2] or asked[1] & asked[2])
    merged = tmp_path / "merged"
    merged.mkdir()
    import_cache(CompletionCache(merged / "llm.sqlite"), files)
    llm = ScriptedLLM()
    stats, replayed = run(data, merged, llm, doc_ids)
    assert llm.requests == [] and stats.calls == 0 and replayed == whole


def test_a_shard_is_fixed_by_the_id_alone():
    from synthir.synth.shards import Shard

    ids = [f"doc-{i}" for i in range(1000)]
    parts = [Shard(i, 4).select(ids) for i in range(4)]
    assert sorted(i for part in parts for i in part) == sorted(ids) and all(
        200 <= len(p) <= 300 for p in parts
    )  # cover, balanced
    assert Shard(1, 4).select(list(reversed(ids))) == list(reversed(parts[1]))  # order does not matter
    assert Shard(0, 1).select(ids) == ids
    assert [i for i in range(4) if Shard(i, 4).holds("doc-7")] == [3]  # sha256 of the id: the same everywhere
