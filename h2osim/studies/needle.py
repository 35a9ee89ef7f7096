"""Needle in a haystack: task accuracy under eviction in the live model, and what replay predicts.

The tasks follow the passkey retrieval test of Mohtashami & Jaggi (2023, "Landmark
Attention", Sec. 4.2: a number hidden in repeated filler, asked for at the end) and the
needle-in-a-haystack heatmap of Kamradt (2023, accuracy over context length x needle
depth), as used by KV-compression work (kvpress, RULER's multi-key needles). Decoding is
greedy in the live model (:mod:`h2osim.model.live`); scoring is exact match of the first
answer-shaped string the model writes (the digits, or the word).

What it simplifies: one needle sentence per prompt (plus distractor entries in the
key-value task), no chat template (a plain completion prompt that ends in the answer's
cue, "... The pass key is"), context lengths counted in the model's tokens but placed at
sentence boundaries (the prompt is within a sentence of the target length; records carry
the real length), SmolLM2-135M only in the measurements.

Pieces:

* :func:`make_task` - the seeded generator. The answer depends on the seed alone, so the
  same needle moves through depths and lengths; the filler is repeated sentences or real
  prose (Python's own reference texts, ``pydoc_data.topics``).
* :func:`score` - exact match on the extracted answer.
* :func:`run_trial` - one prompt, every policy and budget, live; with ``replay=True`` the
  same prompt's full-cache trace is replayed open loop and each record says whether the
  policy still held the needle's tokens at the answer row.
* :func:`run_study`, :func:`accuracy_table`, :func:`confusion_table`, :func:`heatmap_figure` -
  the grid, its tables and the standard heatmap (CLI: ``python -m h2osim.needle``).
  In this process, or on Dask (the client of :func:`h2osim.sweep.dask_client`): one task
  per trial (:func:`trial_task`), each worker loading the model once (:func:`worker_model`).

The answer row: the answer's first token is predicted by the last prompt row P-1, its
second by row P. Under prompt mode ``full`` nothing is evicted before row P (the first
answer token always comes from the full cache, as in real prefill-then-compress
implementations), so the needle's fate is read at row P in every mode: the first row
served over a compressed cache in ``full`` and ``prefill`` mode, one eviction after P-1 in
``stream``. ``prefill`` (kvpress) compresses the prompt once at step P to k tokens, the
question's rows included in what the scores saw, and then only appends: what row P holds
of the needle is what every later answer token sees. ``full`` compresses at the same step
to k and keeps evicting one token per answer token.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

TASKS = ("passkey", "kv")
FILLERS = ("repeat", "pydoc")
NEEDLES = ("digits", "word")
QUESTIONS = ("end", "both")  # the question after the haystack, or before and after it
MIN_LENGTH, MAX_LENGTH = 128, 4096

INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and "
    "memorize it. I will quiz you about the important information there."
)
REPEAT_FILLER = (
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
)
WORDS = (
    "apple", "banana", "orange", "garden", "river", "window", "planet", "silver", "pencil",
    "rabbit", "candle", "forest", "castle", "dragon", "guitar", "island", "mirror", "rocket",
)  # fmt: skip
KEYS = (
    "Paris", "Berlin", "Tokyo", "Madrid", "Rome", "Cairo", "Lima", "Oslo", "Vienna", "Dublin",
    "Prague", "Lisbon",
)  # fmt: skip
PYDOC_TOPICS = ("for", "naming", "with", "while", "if", "try", "function", "class", "import",
                "assignment", "lambda", "return", "yield", "global", "pass", "del")  # fmt: skip


@dataclass(frozen=True)
class TaskSpec:
    """One prompt of the study. ``length`` is the target prompt length in model tokens.

    ``task``: ``passkey`` (one needle, "The pass key is 41190. Remember it.") or ``kv``
    (``keys`` entries "The code for Paris is 41190." spread through the haystack; the
    question asks for the one at ``depth``; the others are distractors at seeded depths).
    """

    task: str = "passkey"
    length: int = 512
    depth: float = 0.5  # 0: right after the instruction, 1: right before the question
    filler: str = "repeat"
    needle: str = "digits"
    question: str = "end"
    seed: int = 0
    keys: int = 3  # kv only: entries in the haystack, the asked one included

    def __post_init__(self) -> None:
        for value, choices, what in ((self.task, TASKS, "task"), (self.filler, FILLERS, "filler"),
                                     (self.needle, NEEDLES, "needle"),
                                     (self.question, QUESTIONS, "question placement")):  # fmt: skip
            if value not in choices:
                raise ValueError(f"{what} must be one of {choices}, got {value!r}")
        if not MIN_LENGTH <= self.length <= MAX_LENGTH:
            raise ValueError(
                f"context length must be in {MIN_LENGTH}..{MAX_LENGTH} tokens, got {self.length}"
            )
        if not 0.0 <= self.depth <= 1.0:
            raise ValueError(f"needle depth must be in 0..1 (0%..100%), got {self.depth}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.task == "kv" and not 2 <= self.keys <= len(KEYS):
            raise ValueError(f"--keys must be in 2..{len(KEYS)}, got {self.keys}")


@dataclass(frozen=True)
class NeedleTask:
    """A generated prompt: the text, the answer, and where the needle sits (characters)."""

    spec: TaskSpec
    text: str
    answer: str
    needle_span: tuple[int, int]  # characters of the asked answer value inside ``text``
    sentence_span: tuple[int, int]  # characters of the whole needle sentence
    distractor_spans: tuple[tuple[int, int], ...] = ()  # kv: the other entries' values
    key: str = ""  # kv: the key asked for

    def record(self) -> dict[str, Any]:
        return asdict(self.spec) | {"answer": self.answer, "key": self.key}


# --------------------------------------------------------------------------- the generator
def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def _answer(spec: TaskSpec, rng: np.random.Generator) -> str:
    if spec.needle == "digits":
        return str(int(rng.integers(10_000, 100_000)))  # five digits, never a leading zero
    return str(rng.choice(WORDS))


def _needle_sentence(spec: TaskSpec, value: str, key: str) -> tuple[str, str]:
    """(sentence with ``{}`` where the value goes, question ending in the answer's cue)."""
    shown = "{}" if spec.needle == "digits" else '"{}"'
    if spec.task == "passkey":
        thing = "pass key" if spec.needle == "digits" else "secret word"
        return (f"The {thing} is {shown}. Remember it.",
                f"What is the {thing}? The {thing} is")  # fmt: skip
    thing = "code" if spec.needle == "digits" else "password"
    return (
        f"The {thing} for {key} is {shown}.",
        f"What is the {thing} for {key}? The {thing} for {key} is",
    )


def filler_sentences(kind: str, seed: int) -> Iterable[str]:
    """An endless stream of filler sentences: the five repeated ones, or the sentences of
    Python's reference topics in a seeded order (whitespace collapsed)."""
    if kind == "repeat":
        while True:
            yield from REPEAT_FILLER
    from pydoc_data.topics import topics

    order = _rng(seed, 7).permutation(len(PYDOC_TOPICS))
    while True:
        for index in order:
            prose = " ".join(topics[PYDOC_TOPICS[index]].split())
            for sentence in re.split(r"(?<=[.!?])\s+", prose):
                if len(sentence) > 1:
                    yield sentence


def word_count(text: str) -> int:
    """A tokenizer-free length: whitespace-separated words (for tests and dry runs)."""
    return len(text.split())


def make_task(spec: TaskSpec, count_tokens: Callable[[str], int] = word_count) -> NeedleTask:
    """Build the prompt of ``spec``; ``count_tokens`` sizes the haystack (the model's tokenizer).

    Layout: instruction, [question], haystack with the needle at ``depth`` of its
    sentences, question. Deterministic per spec: the answer (and kv's keys and
    distractor values) depend on the seed alone, so depths and lengths share the needle.

    Example: ``make_task(TaskSpec(length=128, depth=0.0)).text`` starts "There is an
    important info ... there. The pass key is 85134. Remember it. The grass is green."
    """
    rng = _rng(spec.seed, 1)
    answer = _answer(spec, rng)
    keys = [str(k) for k in rng.permutation(KEYS)[: spec.keys]] if spec.task == "kv" else [""]
    values = [answer] + [_answer(spec, rng) for _ in keys[1:]]
    while len(set(values)) < len(values):  # distractor values differ from the answer
        values = [answer] + [_answer(spec, rng) for _ in keys[1:]]
    other_depths = rng.random(len(keys) - 1)
    template, question = _needle_sentence(spec, answer, keys[0])
    entries = [(spec.depth, _needle_sentence(spec, value, key)[0].format(value), value)
               for key, value in zip(keys, values, strict=True)]  # fmt: skip
    entries[1:] = [(float(d), s, v) for d, (_, s, v) in zip(other_depths, entries[1:], strict=True)]
    head = INTRO + (f" {question.split('?')[0]}?" if spec.question == "both" else "")
    fixed = count_tokens(" ".join([head, *(s for _, s, _ in entries), "\n" + question]))
    haystack: list[str] = []
    used = fixed
    for sentence in filler_sentences(spec.filler, spec.seed):
        if used >= spec.length:
            break
        haystack.append(sentence)
        used += count_tokens(" " + sentence)
    if used > spec.length and len(haystack) > 1:
        haystack.pop()  # the last sentence overshot: stay at or under the target
    # insert entries deepest first so earlier indices stay valid; the asked one wins ties
    slots = [(round(depth * len(haystack)), order) for order, (depth, _, _) in enumerate(entries)]
    pieces: list[Any] = list(haystack)
    for slot, order in sorted(slots, key=lambda item: (-item[0], -item[1])):
        pieces.insert(slot, order)
    text = head
    spans: dict[int, tuple[tuple[int, int], tuple[int, int]]] = {}
    for piece in pieces:
        sentence = entries[piece][1] if isinstance(piece, int) else piece
        start = len(text) + 1
        text += " " + sentence
        if isinstance(piece, int):
            value = entries[piece][2]
            at = sentence.index(value)
            spans[piece] = ((start + at, start + at + len(value)), (start, start + len(sentence)))
    text += "\n" + question
    return NeedleTask(
        spec=spec, text=text, answer=answer, needle_span=spans[0][0], sentence_span=spans[0][1],
        distractor_spans=tuple(spans[i][0] for i in range(1, len(entries))), key=keys[0],
    )  # fmt: skip


# --------------------------------------------------------------------------- scoring
def extract_answer(output: str, needle: str) -> str | None:
    """The first answer-shaped string of a model's output: a run of digits, or a word.

    Examples: (' 41190. Remember', 'digits') -> '41190'; (' "Orange".', 'word') -> 'orange';
    (' the pass key.', 'digits') -> None.
    """
    found = re.search(r"\d+" if needle == "digits" else r"[A-Za-z]+", output)
    if found is None:
        return None
    return found.group(0) if needle == "digits" else found.group(0).lower()


def score(task: NeedleTask, output: str) -> bool:
    """Exact match of the extracted answer. Example: answer 41190, ' 41190.' -> True,
    ' 4119.' -> False, ' 411900' -> False."""
    return extract_answer(output, task.spec.needle) == task.answer


# --------------------------------------------------------------------------- token positions
def char_span_tokens(offsets: Sequence[tuple[int, int]], span: tuple[int, int]) -> np.ndarray:
    """Indices of the tokens whose characters overlap ``span`` (empty tokens never do).

    Example: offsets [(0, 3), (3, 4), (4, 9)], span (3, 9) -> [1, 2].
    """
    start, stop = span
    return np.array([i for i, (a, b) in enumerate(offsets) if b > a and a < stop and b > start],
                    dtype=np.int64)  # fmt: skip


@dataclass(frozen=True)
class EncodedTask:
    """A task in model tokens: the prompt ids and the needle's token positions."""

    task: NeedleTask
    ids: tuple[int, ...]
    needle_tokens: np.ndarray  # positions of the answer value's tokens
    sentence_tokens: np.ndarray  # positions of the whole needle sentence

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def measured_depth(self) -> float:
        """Where the needle's first token sits, as a share of the prompt."""
        return float(self.needle_tokens[0] / max(self.n - 1, 1))


def encode_task(tokenizer, task: NeedleTask) -> EncodedTask:
    """Tokenise the prompt (no chat template) and find the needle's tokens by character offsets."""
    encoded = tokenizer(task.text, return_offsets_mapping=True)
    ids = tuple(int(i) for i in encoded["input_ids"])
    offsets = [tuple(pair) for pair in encoded["offset_mapping"]]
    needle = char_span_tokens(offsets, task.needle_span)
    sentence = char_span_tokens(offsets, task.sentence_span)
    if len(needle) == 0:
        raise RuntimeError(f"the needle {task.answer!r} maps to no token of the prompt")
    return EncodedTask(task, ids, needle, sentence)


def token_counter(tokenizer) -> Callable[[str], int]:
    """``count_tokens`` for :func:`make_task` from a transformers tokenizer."""
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


# --------------------------------------------------------------------------- one trial
ANSWER_TOKENS = {"digits": 8, "word": 6}  # greedy tokens generated per answer


@dataclass
class TrialResult:
    """One prompt under every policy and budget (and the full cache)."""

    encoded: EncodedTask
    records: list[dict[str, Any]]
    # (policy, k, mode) -> (units, needle tokens) bool: what each unit held at the answer row
    kept: dict[tuple[str, int, str], np.ndarray] = field(default_factory=dict, repr=False)
    seconds: float = 0.0


def needle_held(evicted_at: np.ndarray, row: int, positions: np.ndarray) -> np.ndarray:
    """``(units, len(positions))`` bool: which needle tokens each unit held when ``row`` was served."""
    from h2osim.schedule import kept_at

    return kept_at(evicted_at, row)[:, positions]


def held_summary(held: np.ndarray) -> dict[str, float]:
    """Share of (unit, needle token) pairs kept, and share of units holding the whole needle.

    Example: [[True, True], [True, False]] -> held 0.75, units whole 0.5.
    """
    return {"needle_held": float(held.mean()), "units_whole_needle": float(held.all(axis=1).mean())}


def _greedy(t: int, logits):
    return logits.argmax(dim=-1)


def run_trial(
    loaded: tuple[Any, Any, Any],
    task: NeedleTask | EncodedTask,
    policies: Sequence[str],
    budgets: Sequence[float | int],
    prompt_modes: Sequence[str] = ("full",),
    *,
    replay: bool = False,
    held_threshold: float = 0.5,
    new_tokens: int | None = None,
    policy_params: dict[str, Any] | None = None,
) -> TrialResult:
    """Greedy answers of the full cache and of every (policy, budget, prompt mode), live.

    ``loaded`` is ``(model, tokenizer, info)`` from :func:`h2osim.model.load_model`.
    Budgets are fractions of the prompt (or token counts); k >= the whole sequence runs
    the policy anyway (and must equal the full cache). One full-cache run serves all
    modes. With ``replay`` the full-cache trace of the prompt plus the full cache's
    answer is replayed open loop at the same k and mode, and each record gains
    ``replay_needle_held`` and ``replay_predicts`` (held share >= ``held_threshold``).
    """
    from h2osim.model.live import LiveConfig, run_group
    from h2osim.policies import make_policy
    from h2osim.schedule import CacheSchedule

    started = time.perf_counter()
    model, tokenizer, info = loaded
    encoded = task if isinstance(task, EncodedTask) else encode_task(tokenizer, task)
    task = encoded.task
    ids, prompt = list(encoded.ids), encoded.n
    steps = new_tokens or ANSWER_TOKENS[task.spec.needle]
    n = prompt + steps
    answer_row = prompt  # see the module docstring
    last_row = max(answer_row, n - 2)  # the row that predicts the last answer token
    base = task.record() | {"n": prompt, "needle_depth_measured": round(encoded.measured_depth, 4),
                            "needle_tokens": len(encoded.needle_tokens)}  # fmt: skip

    def answered(run, row: int) -> tuple[str, list[int]]:
        new = [int(t) for t in run.token_ids[row][prompt:]]
        return tokenizer.decode(new), new

    full_run = run_group(model, [make_policy("full")], n, ids, n, prompt, LiveConfig(),
                         choose=_greedy, all_logits=False)  # fmt: skip
    full_text, full_new = answered(full_run, 0)
    full_correct = score(task, full_text)
    records = [base | {"policy": "full", "budget": n, "budget_requested": 1.0,
                       "prompt_mode": "-", "output": full_text, "correct": full_correct,
                       "same_as_full": True, "needle_held": 1.0, "units_whole_needle": 1.0,
                       "needle_held_last": 1.0}]  # fmt: skip
    result = TrialResult(encoded, records)
    trace = None
    if replay:
        from h2osim.model.recorder import record, to_trace

        recording = record(model, ids, max_new_tokens=steps, forced_tokens=full_new,
                           store_values=False, attention_dtype=np.float16, prefill_chunk=256)  # fmt: skip
        trace = to_trace(recording, tokenizer, info, {"tool": "h2osim.needle"}, validate=False)
    params = policy_params or {}
    for mode in prompt_modes:
        for budget in budgets:
            groups: dict[tuple[int, str], list] = {}
            for name in policies:
                policy = make_policy(name, **params.get(name, {}))
                schedule = CacheSchedule.for_policy(policy, budget, n, prompt, budget_of="prompt",
                                                    prompt_mode=mode)  # fmt: skip
                groups.setdefault((min(schedule.budget, n), schedule.prompt_mode), []).append(
                    policy
                )
            for (k, own_mode), members in groups.items():
                run = run_group(model, members, k, ids, n, prompt, LiveConfig(prompt_mode=own_mode),
                                choose=_greedy, all_logits=False)  # fmt: skip
                for row, policy in enumerate(members):
                    text, new = answered(run, row)
                    evicted_at = run.controller.evicted_at[row]
                    held = needle_held(evicted_at, answer_row, encoded.needle_tokens)
                    held_last = needle_held(evicted_at, last_row, encoded.needle_tokens)
                    result.kept[(policy.name, k, own_mode)] = held
                    record = base | {
                        "policy": policy.name, "budget": k, "budget_requested": float(budget),
                        "prompt_mode": own_mode, "output": text, "correct": score(task, text),
                        "same_as_full": new == full_new, **held_summary(held),
                        "needle_held_last": float(held_last.mean()),
                    }  # fmt: skip
                    if trace is not None:
                        record |= _replay_prediction(trace, make_policy(policy.name,
                                                     **params.get(policy.name, {})), k, own_mode,
                                                     answer_row, encoded.needle_tokens,
                                                     held_threshold)  # fmt: skip
                    records.append(record)
    result.seconds = time.perf_counter() - started
    for record in records:
        record["full_correct"] = full_correct
    return result


def _replay_prediction(trace, policy, k: int, mode: str, row: int, positions: np.ndarray,
                       threshold: float) -> dict[str, Any]:  # fmt: skip
    """Open-loop replay of the full-cache trace: did the policy hold the needle at ``row``?"""
    from h2osim.engine import ReplayConfig
    from h2osim.engine import replay as replay_trace

    result = replay_trace(
        trace, policy, k, config=ReplayConfig(prompt_mode=mode, output_error=False)
    )
    held = needle_held(result.evicted_at, row, positions)
    summary = held_summary(held)
    return {"replay_needle_held": summary["needle_held"],
            "replay_units_whole_needle": summary["units_whole_needle"],
            "replay_predicts": summary["needle_held"] >= threshold,
            "replay_seconds": round(result.seconds, 3)}  # fmt: skip


# --------------------------------------------------------------------------- on Dask
@dataclass(frozen=True)
class ModelOptions:
    """How a Dask worker loads the model itself (:func:`h2osim.model.load_model`'s
    arguments): tasks carry these, never the weights. Example: ``ModelOptions()`` is the
    bundled SmolLM2, float32, one torch thread, on the worker's best device."""

    model: str | None = None  # None: the bundled SmolLM2; else a folder or .gguf path
    device: str = "auto"
    dtype: str = "float32"
    threads: int | None = 1  # torch CPU threads per task
    use_cache: bool = True  # the GGUF's safetensors conversion cache


_WORKER_MODELS: dict[ModelOptions, tuple[tuple[Any, Any, Any], threading.Lock]] = {}
_WORKER_LOCK = threading.Lock()


def _worker_entry(options: ModelOptions) -> tuple[tuple[Any, Any, Any], threading.Lock]:
    with _WORKER_LOCK:
        if options not in _WORKER_MODELS:
            from h2osim.model import load_model

            loaded = load_model(options.model, device=options.device, dtype=options.dtype,
                                use_cache=options.use_cache)  # fmt: skip
            _WORKER_MODELS[options] = (loaded, threading.Lock())
        return _WORKER_MODELS[options]


def worker_model(options: ModelOptions) -> tuple[Any, Any, Any]:
    """``(model, tokenizer, info)`` of ``options``, loaded once per process and kept: every
    later task on that worker (and every thread of an in-process cluster) reuses it."""
    return _worker_entry(options)[0]


def _task_threads(options: ModelOptions) -> None:
    """One BLAS thread (H2OSIM_THREADS) and ``options.threads`` torch threads, set in the
    thread that runs the task (OpenMP's thread count is per calling thread)."""
    from h2osim.cli import limit_threads
    from h2osim.model import set_threads

    limit_threads()
    set_threads(options.threads)


def trial_task(model: ModelOptions, spec: TaskSpec, grid: StudyGrid, replay: bool,
               held_threshold: float) -> tuple[list[dict[str, Any]], float]:  # fmt: skip
    """One Dask task: the trial of ``spec`` under ``grid``'s policies, budgets and prompt
    modes on this worker's model; returns ``(records, seconds)``."""
    _task_threads(model)
    loaded, lock = _worker_entry(model)
    with lock:  # --replay's recorder hooks the model's layers: one trial per model at a time
        trial = run_trial(loaded, make_task(spec, token_counter(loaded[1])), grid.policies,
                          grid.budgets, grid.prompt_modes, replay=replay,
                          held_threshold=held_threshold)  # fmt: skip
    return trial.records, trial.seconds


def model_metadata(model: ModelOptions) -> dict[str, Any]:
    """A worker's model metadata (:meth:`ModelInfo.metadata`), for the study's JSON."""
    _task_threads(model)
    return worker_model(model)[2].metadata()


# --------------------------------------------------------------------------- the grid
@dataclass(frozen=True)
class StudyGrid:
    """Everything a study varies. Each (length, depth, seed) is one prompt; every prompt runs
    every policy x budget x prompt mode live (and the full cache once)."""

    lengths: tuple[int, ...] = (512, 1024)
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    seeds: tuple[int, ...] = (0, 1)
    policies: tuple[str, ...] = ("h2o", "tova", "window", "sink")
    budgets: tuple[float, ...] = (0.1, 0.2, 0.5)
    prompt_modes: tuple[str, ...] = ("full",)
    base: TaskSpec = TaskSpec()  # task, filler, needle, question, keys (length/depth/seed vary)

    def specs(self) -> list[TaskSpec]:
        return [replace(self.base, length=length, depth=depth, seed=seed)
                for length in self.lengths for depth in self.depths for seed in self.seeds]  # fmt: skip


QUICK_GRID = StudyGrid(lengths=(256,), depths=(0.0, 0.5, 1.0), seeds=(0,), policies=("h2o", "window"),
                       budgets=(0.2,))  # fmt: skip


def run_study(
    loaded: tuple[Any, Any, Any] | None,
    grid: StudyGrid,
    *,
    replay: bool = False,
    held_threshold: float = 0.5,
    done: dict[str, list[dict[str, Any]]] | None = None,
    on_trial: Callable[[str, list[dict[str, Any]], float], None] | None = None,
    client: Any = None,
    model: ModelOptions | None = None,
) -> list[dict[str, Any]]:
    """Every prompt of ``grid``; returns the records of all trials (one per policy run),
    in grid order.

    ``done`` maps :func:`trial_key` to records already computed (a resumed study);
    ``on_trial(key, records, seconds)`` is called after each new trial (in the order they
    finish). In this process by default (``loaded`` is the model); with a Dask
    ``client`` each trial (one prompt: the full cache, every policy x budget x prompt
    mode, its replays) is one task, and each worker loads the model of ``model`` once
    (:func:`worker_model`; ``loaded`` is then unused and may be None). The records are
    the same either way.
    """
    results: dict[str, list[dict[str, Any]]] = dict(done or {})
    todo = {trial_key(spec, grid, replay): spec for spec in grid.specs()}
    todo = {key: spec for key, spec in todo.items() if key not in results}

    def finished(key: str, records: list[dict[str, Any]], seconds: float) -> None:
        results[key] = records
        if on_trial is not None:
            on_trial(key, records, seconds)

    if client is None:
        if loaded is None:
            raise ValueError("run_study needs the loaded model, or a Dask client and model options")
        count = token_counter(loaded[1])
        for key, spec in todo.items():
            trial = run_trial(loaded, make_task(spec, count), grid.policies, grid.budgets,
                              grid.prompt_modes, replay=replay, held_threshold=held_threshold)  # fmt: skip
            finished(key, trial.records, trial.seconds)
    elif todo:
        import hashlib

        from distributed import as_completed

        if model is None:
            raise ValueError("a study on Dask needs ModelOptions: the workers load the model")
        futures = {client.submit(trial_task, model, spec, grid, replay, held_threshold,
                                 key=f"needle-{hashlib.sha1(key.encode()).hexdigest()[:16]}"): key
                   for key, spec in todo.items()}  # fmt: skip
        for future in as_completed(futures):
            records, seconds = future.result()
            finished(futures[future], records, seconds)
    return [record for spec in grid.specs() for record in results[trial_key(spec, grid, replay)]]


def trial_key(spec: TaskSpec, grid: StudyGrid, replay: bool) -> str:
    """What identifies a trial's records in a resume file."""
    import json

    return json.dumps([asdict(spec), grid.policies, grid.budgets, grid.prompt_modes, replay])


# --------------------------------------------------------------------------- tables
def _mean(values: Iterable[bool]) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None


def accuracy_table(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Accuracy per (prompt mode, policy, budget) with one ``acc@L`` column per length;
    the full cache first (the ceiling). Example row: {"policy": "h2o", "budget": 0.2,
    "prompt_mode": "full", "acc@512": 0.4, "acc@1024": 0.2, "trials": 30}."""
    lengths = sorted({r["length"] for r in records})
    keys: list[tuple[str, str, float]] = []
    for r in records:
        key = (r["prompt_mode"], r["policy"], r["budget_requested"])
        if key not in keys:
            keys.append(key)
    keys.sort(key=lambda k: (k[1] != "full", k[0], k[2], k[1]))
    rows = []
    for mode, policy, budget in keys:
        chosen = [r for r in records if (r["prompt_mode"], r["policy"], r["budget_requested"])
                  == (mode, policy, budget)]  # fmt: skip
        row = {"prompt_mode": mode, "policy": policy, "budget": budget, "trials": len(chosen),
               "accuracy": _mean(r["correct"] for r in chosen),
               "same_as_full": _mean(r["same_as_full"] for r in chosen),
               "needle_held": float(np.mean([r["needle_held"] for r in chosen]))}  # fmt: skip
        for length in lengths:
            row[f"acc@{length}"] = _mean(r["correct"] for r in chosen if r["length"] == length)
        rows.append(row)
    return rows


def depth_table(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Accuracy per (prompt mode, policy, budget) with one ``d=..`` column per needle depth
    (all lengths pooled): the depth pattern."""
    depths = sorted({r["depth"] for r in records})
    rows = []
    for row in accuracy_table(records):
        chosen = [r for r in records if (r["prompt_mode"], r["policy"], r["budget_requested"])
                  == (row["prompt_mode"], row["policy"], row["budget"])]  # fmt: skip
        out = {key: row[key] for key in ("prompt_mode", "policy", "budget")}
        for depth in depths:
            out[f"d={depth:g}"] = _mean(r["correct"] for r in chosen if r["depth"] == depth)
        rows.append(out)
    return rows


def confusion_table(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Open-loop replay's prediction (needle held at the answer row) against live accuracy,
    per (prompt mode, policy): counts of held/lost x correct/wrong, and how often replay's
    call was right. Records without a replay prediction (the full cache) are skipped."""
    rows = []
    keys = sorted({(r["prompt_mode"], r["policy"]) for r in records if "replay_predicts" in r})
    for mode, policy in keys:
        chosen = [r for r in records
                  if (r["prompt_mode"], r["policy"]) == (mode, policy) and "replay_predicts" in r]  # fmt: skip
        held_right = sum(r["replay_predicts"] and r["correct"] for r in chosen)
        held_wrong = sum(r["replay_predicts"] and not r["correct"] for r in chosen)
        lost_right = sum(not r["replay_predicts"] and r["correct"] for r in chosen)
        lost_wrong = sum(not r["replay_predicts"] and not r["correct"] for r in chosen)
        live_held = [r["needle_held"] >= 0.5 for r in chosen]
        rows.append({
            "prompt_mode": mode, "policy": policy, "trials": len(chosen),
            "held_correct": held_right, "held_wrong": held_wrong, "lost_correct": lost_right,
            "lost_wrong": lost_wrong, "replay_right": (held_right + lost_wrong) / len(chosen),
            "live_accuracy": _mean(r["correct"] for r in chosen),
            "replay_vs_live_held": _mean(a == r["replay_predicts"]
                                         for a, r in zip(live_held, chosen, strict=True)),
        })  # fmt: skip
    return rows


ACCURACY_COLUMNS = (("prompt_mode", "prompt", "s"), ("policy", "policy", "s"),
                    ("budget", "budget", "g"), ("trials", "trials", "d"),
                    ("accuracy", "accuracy", ".2f"), ("same_as_full", "same as full", ".2f"),
                    ("needle_held", "needle held", ".2f"))  # fmt: skip
CONFUSION_COLUMNS = (("prompt_mode", "prompt", "s"), ("policy", "policy", "s"),
                     ("trials", "trials", "d"), ("held_correct", "held+right", "d"),
                     ("held_wrong", "held+wrong", "d"), ("lost_correct", "lost+right", "d"),
                     ("lost_wrong", "lost+wrong", "d"), ("replay_right", "replay right", ".2f"),
                     ("live_accuracy", "live acc", ".2f"),
                     ("replay_vs_live_held", "held: replay=live", ".2f"))  # fmt: skip


def table_columns(rows: Sequence[dict[str, Any]], base: Sequence[tuple[str, str, str]],
                  prefix: str) -> list[tuple[str, str, str]]:  # fmt: skip
    """``base`` plus every column of ``rows`` whose name starts with ``prefix`` (acc@, d=)."""
    extra = [key for key in (rows[0] if rows else {}) if key.startswith(prefix)]
    return [*base, *((key, key, ".2f") for key in extra)]


def to_csv(records: Sequence[dict[str, Any]]) -> str:
    """Every record as one CSV row (columns: the union of the records' keys, in order)."""
    import csv
    import io

    columns: list[str] = []
    for record in records:
        columns += [key for key in record if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


# --------------------------------------------------------------------------- the heatmap
def _budget_label(budget: float) -> str:
    """0.2 -> '0.2 of prompt'; 64 -> 'k=64'."""
    return f"{budget:g} of prompt" if budget <= 1 else f"k={budget:g}"


def heatmap_figure(records: Sequence[dict[str, Any]], prompt_mode: str, title: str = ""):
    """The needle heatmap: accuracy over needle depth (rows) x context length (columns),
    one panel per policy (rows of panels) and budget (columns); the full cache's panel
    (the ceiling) first. Cells are annotated with the accuracy; red 0, green 1."""
    from h2osim.plots import plt

    chosen = [r for r in records if r["prompt_mode"] in (prompt_mode, "-")]
    lengths = sorted({r["length"] for r in chosen})
    depths = sorted({r["depth"] for r in chosen})
    policies = [p for p in dict.fromkeys(r["policy"] for r in chosen) if p != "full"]
    budgets = sorted({r["budget_requested"] for r in chosen if r["policy"] != "full"})
    columns = max(len(budgets), 1)
    figure, axes = plt.subplots(len(policies) + 1, columns, squeeze=False,
                                figsize=(1.0 + 0.9 * len(lengths) * columns + 1.2 * columns,
                                         0.8 + 0.42 * len(depths) * (len(policies) + 1) + 0.5 * len(policies)),
                                layout="constrained")  # fmt: skip
    image = None
    for row, policy in enumerate(["full", *policies]):
        for column in range(columns):
            axis = axes[row][column]
            if policy == "full" and column > 0:
                axis.axis("off")
                continue
            grid = np.full((len(depths), len(lengths)), np.nan)
            for i, depth in enumerate(depths):
                for j, length in enumerate(lengths):
                    cell = [r["correct"] for r in chosen if r["policy"] == policy
                            and r["depth"] == depth and r["length"] == length
                            and (policy == "full" or r["budget_requested"] == budgets[column])]  # fmt: skip
                    if cell:
                        grid[i, j] = np.mean(cell)
            image = axis.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
            for (i, j), value in np.ndenumerate(grid):
                if not np.isnan(value):
                    axis.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
            axis.set_xticks(range(len(lengths)), [str(length) for length in lengths], fontsize=7)
            axis.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths], fontsize=7)
            label = (
                "full cache (ceiling)"
                if policy == "full"
                else f"{policy}, {_budget_label(budgets[column])}"
            )
            axis.set_title(label, fontsize=8)
            if column == 0:
                axis.set_ylabel("needle depth", fontsize=7)
            if row == len(policies):
                axis.set_xlabel("context length (tokens)", fontsize=7)
    if image is not None:
        figure.colorbar(image, ax=axes, shrink=0.6, label="exact-match accuracy")
    figure.suptitle(title or f"needle retrieval, prompt mode {prompt_mode}", fontsize=9)
    return figure
