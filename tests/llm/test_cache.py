from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from synthir.llm.base import Completion, LLMError, Request, Sampling, UnsupportedError, Usage, sample_seed
from synthir.llm.cached import CachedBackend
from synthir.llm.store import CompletionCache, cache_key, default_cache_path

from .fakes import ScriptedBackend

REPO = Path(__file__).resolve().parents[2]
SAMPLING = Sampling(temperature=0.8, max_tokens=16, seed=5)


def texts(completions) -> list[list[str]]:
    return [c.texts for c in completions]


def make(tmp_path: Path, **options) -> tuple[CachedBackend, ScriptedBackend]:
    fake = ScriptedBackend(**options.pop("fake", {}))
    return CachedBackend(fake, CompletionCache(tmp_path / "llm.sqlite"), **options), fake


def test_default_path_is_under_the_cache_root(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SYNTHIR_CACHE_DIR", str(tmp_path))
    assert default_cache_path() == tmp_path / "llm.sqlite"


IDENTITY = {"backend": "openai", "server": "http://a:8000/v1", "model": "m"}


def test_key_covers_identity_input_sampling_and_index() -> None:
    base = cache_key(IDENTITY, "p", SAMPLING.as_dict(), 0)
    assert base == cache_key(dict(reversed(IDENTITY.items())), "p", dict(reversed(SAMPLING.as_dict().items())), 0)
    others = [{**IDENTITY, "model": "m2"}, {**IDENTITY, "server": "http://b:8000/v1"}, {**IDENTITY, "backend": "vllm"}]
    keys = {
        base,
        cache_key(IDENTITY, "p2", SAMPLING.as_dict(), 0),
        *(cache_key(o, "p", SAMPLING.as_dict(), 0) for o in others),
    }
    assert len(keys) == 5
    assert base != cache_key(IDENTITY, "p", Sampling(seed=6).as_dict(), 0)
    assert base != cache_key(IDENTITY, "p", SAMPLING.as_dict(), 1)
    messages = [{"role": "user", "content": "p"}]
    assert cache_key(IDENTITY, messages, {}, 0) != cache_key(IDENTITY, "p", {}, 0)


def test_key_is_stable_across_releases() -> None:
    """Changing what goes into a key silently empties everyone's cache: do it on purpose, then update this."""
    key = cache_key(IDENTITY, [{"role": "user", "content": "p"}], Sampling(seed=3).as_dict(), 2)
    assert key == "bc239108a574b3c3d31465900c9cef9c4f870f11e147e206c818d3702786858b"


def test_identity_names_backend_kind_server_and_model(tmp_path: Path) -> None:
    cached, _ = make(tmp_path)
    assert cached.identity == {"backend": "ScriptedBackend", "server": None, "model": "fake/model"}
    fake = ScriptedBackend()
    fake.identity = {"backend": "openai", "server": "http://a:8000/v1", "model": "fake/model"}  # type: ignore[attr-defined]
    assert CachedBackend(fake, cached.cache).identity == fake.identity


def test_switching_server_misses_the_cache(tmp_path: Path) -> None:
    """Same model name, another server: its completions are not the old server's."""
    first, second = ScriptedBackend(), ScriptedBackend()
    first.identity = {"backend": "openai", "server": "http://a:8000/v1", "model": "fake/model"}  # type: ignore[attr-defined]
    second.identity = {**first.identity, "server": "http://b:8000/v1"}  # type: ignore[attr-defined]
    cache = CompletionCache(tmp_path / "llm.sqlite")
    CachedBackend(first, cache).generate([Request(prompt="q", sampling=SAMPLING)])
    again = CachedBackend(second, cache)
    again.generate([Request(prompt="q", sampling=SAMPLING)])
    assert again.stats.cache_hits == 0 and [r.prompt for r in second.requests] == ["q"]


def test_identical_rerun_makes_no_backend_calls(tmp_path: Path) -> None:
    requests = [Request(prompt=f"p{i}", n=2, sampling=SAMPLING) for i in range(5)]
    requests.append(Request(messages=[{"role": "user", "content": "hi"}], n=1, sampling=SAMPLING))
    cached, fake = make(tmp_path)
    first = cached.generate(requests)
    assert cached.stats.calls == 11 and cached.stats.cache_hits == 0 and cached.stats.failures == 0
    assert cached.stats.tokens_out == 22
    assert first[0].texts == [f"p0#{sample_seed(5, 0)}", f"p0#{sample_seed(5, 1)}"]
    assert all(r.n == 1 for r in fake.requests)

    again, fake2 = make(tmp_path)
    assert texts(again.generate(requests)) == texts(first)
    assert fake2.batches == [] and again.stats.calls == 0 and again.stats.cache_hits == 11
    assert again.stats.tokens_in == again.stats.tokens_out == 0
    assert again.generate(requests)[0].tokens_out == first[0].tokens_out == 4


def test_more_samples_reuse_cached_ones_and_stay_reproducible(tmp_path: Path) -> None:
    cached, fake = make(tmp_path)
    small = cached.generate([Request(prompt="q", n=2, sampling=SAMPLING)])[0]
    big = cached.generate([Request(prompt="q", n=4, sampling=SAMPLING)])[0]
    assert big.texts[:2] == small.texts
    assert [r.sampling.seed for r in fake.batches[1]] == [sample_seed(5, 2), sample_seed(5, 3)]
    fresh, _ = make(tmp_path / "other")
    assert fresh.generate([Request(prompt="q", n=4, sampling=SAMPLING)])[0].texts == big.texts


def test_grouped_misses_ask_for_only_what_is_missing(tmp_path: Path) -> None:
    cached, fake = make(tmp_path, per_sample_seeds=False)
    cached.generate([Request(prompt="q", n=2, sampling=SAMPLING)])
    out = cached.generate([Request(prompt="q", n=5, sampling=SAMPLING), Request(prompt="r", n=2, sampling=SAMPLING)])
    assert [(r.prompt, r.n) for r in fake.batches[1]] == [("q", 3), ("r", 2)]
    assert fake.batches[1][0].sampling.seed == sample_seed(5, 2)
    assert [len(c.texts) for c in out] == [5, 2] and out[0].tokens_out == 10


def test_failures_are_counted_and_not_cached(tmp_path: Path) -> None:
    requests = [Request(prompt=p, sampling=SAMPLING) for p in ("ok", "flaky", "ok2")]
    cached, _ = make(tmp_path, fake={"fail": {"flaky": 1}})
    out = cached.generate(requests)
    assert [c.failed for c in out] == [False, True, False]
    assert out[1].error == "scripted failure" and out[1].texts == []
    assert cached.stats.failures == 1 and len(cached.cache) == 2
    assert cached.stats.first_error == cached.stats.as_dict()["first_error"] == "scripted failure"

    rerun, fake = make(tmp_path)
    out = rerun.generate(requests)
    assert [r.prompt for r in fake.requests] == ["flaky"]
    assert not any(c.failed for c in out) and rerun.stats.cache_hits == 2
    assert rerun.stats.first_error is None and rerun.stats.as_dict()["first_error"] is None


def test_batches_are_bounded_and_logprobs_round_trip(tmp_path: Path) -> None:
    sampling = Sampling(seed=1, logprobs=2)
    requests = [Request(prompt=f"p{i}", sampling=sampling) for i in range(7)]
    cached, fake = make(tmp_path, batch_size=3)
    first = cached.generate(requests)
    assert [len(b) for b in fake.batches] == [3, 3, 1] and cached.stats.batches == 3
    again, _ = make(tmp_path)
    second = again.generate(requests)
    assert second[0].logprobs == first[0].logprobs == [{"yes": -0.5, "no": -1.5}]


def test_yes_no_scores_are_cached(tmp_path: Path) -> None:
    prompts = ["a", "bb", [{"role": "user", "content": "ccc"}]]
    cached, _ = make(tmp_path)
    assert cached.score_yes_no(prompts) == [1.0, 2.0, 1.0]
    again, fake2 = make(tmp_path)
    assert again.score_yes_no(prompts) == [1.0, 2.0, 1.0] and fake2.scored == []

    class NoScores:
        model_id = "x"

    with pytest.raises(UnsupportedError, match="NoScores cannot score"):
        CachedBackend(NoScores(), again.cache).score_yes_no(["a"])  # type: ignore[arg-type]


def test_yes_no_backend_crash_is_an_llm_error_with_the_reason(tmp_path: Path) -> None:
    cached, fake = make(tmp_path)

    def crash(prompts):
        raise RuntimeError("CUDA out of memory")

    fake.score_yes_no = crash  # type: ignore[method-assign]
    with pytest.raises(LLMError) as caught:
        cached.score_yes_no(["a"])
    assert str(caught.value) == "fake/model: yes/no scoring failed: RuntimeError: CUDA out of memory"
    assert cached.stats.first_error == str(caught.value)


CHILD = textwrap.dedent(
    """
    import sys
    from synthir.llm.base import Request, Sampling
    from synthir.llm.cached import CachedBackend
    from synthir.llm.store import CompletionCache
    from tests.llm.fakes import ScriptedBackend

    delay = float(sys.argv[2])
    requests = [Request(prompt=f"doc {i}", n=2, sampling=Sampling(temperature=1.0, seed=3)) for i in range(20)]
    cached = CachedBackend(ScriptedBackend(delay=delay), CompletionCache(sys.argv[1]), batch_size=4)
    for completion in cached.generate(requests):
        print("|".join(completion.texts))
    print(cached.stats.calls, file=sys.stderr)
    """
)


def run_child(db: Path, delay: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db), str(delay)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def rows(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db, timeout=10) as conn:
        try:
            return conn.execute("SELECT COUNT(*) FROM completions").fetchone()[0]
        except sqlite3.OperationalError:  # table not created yet
            return 0


def test_sigkill_mid_run_then_rerun_matches_uninterrupted_run(tmp_path: Path) -> None:
    reference = run_child(tmp_path / "ref.sqlite", 0.0)
    expected, calls = reference.communicate(timeout=60)
    assert reference.returncode == 0 and len(expected.splitlines()) == 20 and int(calls) == 40

    db = tmp_path / "killed.sqlite"
    child = run_child(db, 0.15)
    deadline = time.monotonic() + 30
    while rows(db) < 12 and time.monotonic() < deadline:  # 40 samples in batches of 4: kill after 3+ batches
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    done = rows(db)
    assert 12 <= done < 40 and done % 4 == 0  # whole batches only

    rerun = run_child(db, 0.0)
    output, calls = rerun.communicate(timeout=60)
    assert output == expected
    assert int(calls) == 40 - done  # at most the lost in-flight batch (4) + what was never started
    select = "SELECT key, text FROM completions ORDER BY key"
    with sqlite3.connect(db) as conn, sqlite3.connect(tmp_path / "ref.sqlite") as ref:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored, reference = conn.execute(select).fetchall(), ref.execute(select).fetchall()
    assert len(stored) == 40 and stored == reference  # same samples under the same keys as the uninterrupted run


def test_rerun_after_kill_calls_only_the_missing(tmp_path: Path) -> None:
    """In-process version of the crash check: calls on rerun = samples not committed before the crash."""
    requests = [Request(prompt=f"doc {i}", sampling=SAMPLING) for i in range(10)]
    db = tmp_path / "llm.sqlite"
    cached = CachedBackend(ScriptedBackend(), CompletionCache(db), batch_size=3)

    class Crash(Exception):
        pass

    original = cached.backend.generate

    def crashing(batch):
        if len(cached.backend.batches) == 2:  # dies while the third batch is in flight
            raise Crash
        return original(batch)

    cached.backend.generate = crashing  # type: ignore[method-assign]
    with pytest.raises(Crash):
        cached.generate(requests)
    assert len(CompletionCache(db)) == 6  # the two batches that returned, committed before the crash
    rerun, fake = make(tmp_path)
    assert texts(rerun.generate(requests)) == texts(make(tmp_path / "uninterrupted")[0].generate(requests))
    # exactly the lost in-flight batch (doc 6-8) and the one never started (doc 9), nothing committed before
    assert [r.prompt for r in fake.requests] == ["doc 6", "doc 7", "doc 8", "doc 9"]
    assert rerun.stats.calls == 4 and rerun.stats.cache_hits == 6


class PrefixCachingBackend(ScriptedBackend):
    """A fake backend that, like llama.cpp, reuses the prompt it saw last: the shared leading characters count
    as cached tokens (one character, one token). Its yes/no scores are counted in `scoring_usage`."""

    def __init__(self) -> None:
        super().__init__()
        self.last = ""
        self.scoring_usage = Usage()

    def generate(self, requests: list[Request]) -> list[Completion]:
        results = super().generate(requests)
        for request, result in zip(requests, results, strict=True):
            prompt = request.prompt or ""
            result.tokens_in = len(prompt)
            result.tokens_cached = len(os.path.commonprefix([self.last, prompt]))  # noqa: RUF071 (strings)
            self.last = prompt
        return results

    def score_yes_no(self, prompts):
        for prompt in prompts:
            self.scoring_usage.add(Completion(["Yes"], tokens_in=len(prompt), tokens_cached=2, tokens_out=1))
        return super().score_yes_no(prompts)


def test_stats_count_prompt_tokens_the_backend_reused(tmp_path: Path) -> None:
    backend = PrefixCachingBackend()
    cached = CachedBackend(backend, CompletionCache(tmp_path / "cache.sqlite"))
    cached.generate([Request(prompt=f"shared prefix {i}", sampling=SAMPLING) for i in range(3)])
    assert (cached.stats.tokens_in, cached.stats.tokens_cached) == (3 * 15, 2 * 14)
    cached.score_yes_no(["Query: a", "Query: bb"])
    assert (cached.stats.tokens_in, cached.stats.tokens_cached, cached.stats.tokens_out) == (45 + 17, 28 + 4, 6 + 2)
    cached.score_yes_no(["Query: a"])  # a cache hit costs no tokens
    assert cached.stats.tokens_in == 62


def test_release_stops_the_engine_and_the_next_miss_reaches_the_backend_again(tmp_path: Path) -> None:
    class ClosableBackend(ScriptedBackend):
        """Test double: a backend that records being stopped."""

        device = "cuda:0"
        closed = 0

        def close(self) -> None:
            self.closed += 1

    inner = ClosableBackend()
    backend = CachedBackend(inner, CompletionCache(tmp_path / "c.sqlite"))
    backend.generate([Request(prompt="a")])
    backend.release()
    assert inner.closed == 1 and backend.on_gpu
    backend.generate([Request(prompt="a"), Request(prompt="b")])
    assert [r.prompt for r in inner.requests] == ["a", "b"]  # "a" from the cache, "b" from the (restarted) backend
    plain = CachedBackend(ScriptedBackend(), CompletionCache(tmp_path / "d.sqlite"))
    plain.release()  # nothing to stop
    assert not plain.on_gpu
