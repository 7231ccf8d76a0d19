"""``extract``: bring stages up to date for the prepared corpus, and ``status``."""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from core.errors import StageError
from core.hashing import FileHashCache
from pipeline.corpus import load_corpus
from pipeline.engine import ShardResult, forget_built, publish, run_shard, shard_lock, \
    shard_summary, wait_published
from pipeline.plan import StagePlan, explain_stale, load_params, plan_stage, save_params, \
    stage_identity
from core.devices import visible_gpus
from pipeline.lanes import LaneStopped, run_lanes, stage_lanes
from pipeline.scheduler import ClusterPool, default_workers
from pipeline.stages import get_stage, resolve_order, stage_names
from pipeline.store import cache_root
from pipeline.verify import orphan_shards

log = logging.getLogger(__name__)


@dataclass
class StageReport:
    stage: str
    identity: str
    shards_total: int
    computed: int
    reused: int
    failed: dict[str, str]
    seconds: float
    notes: dict[str, str] = dataclasses.field(default_factory=dict)


def merged_params(workdir: str | Path, overrides: dict[str, dict[str, Any]] | None,
                  reset: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Saved stage parameters of this work directory, updated by ``overrides``, saved back.

    Stages in ``reset`` first forget what was remembered for them (back to their defaults).
    """
    params = load_params(workdir)
    for stage in reset or []:
        params.pop(get_stage(stage).name, None)  # an unknown name is an error, not a no-op
    for given, kv in (overrides or {}).items():
        st = get_stage(given)
        stage = st.name
        # validate before anything is remembered: a bad value (a model that does not exist) must
        # not be saved, or every later extract and status would fail on it
        stage_identity(st, st.make_config({**params.get(stage, {}), **kv}))
        params.setdefault(stage, {}).update(kv)
    if overrides or reset:
        save_params(workdir, params)
    return params


class _Planner:
    """Plans stages upstream first; a stage's plan sees its upstream stages' utterance keys."""

    def __init__(self, workdir: str | Path, params: dict[str, dict[str, Any]], rehash: bool = False):
        self.workdir, self.params = workdir, params
        self.corpus = load_corpus(workdir)
        self.hashes = FileHashCache(cache_root(workdir) / "audio_hashes.json", rehash=rehash)
        self.keys: dict[str, dict[str, str]] = {}

    def plan(self, name: str) -> StagePlan:
        return plan_stage(self.workdir, name, self.corpus, self.params.get(name), self.keys, self.hashes)

    def settle(self, plan: StagePlan) -> None:
        """``plan`` is final: downstream stages key on its utterance keys."""
        self.keys[plan.stage.name] = plan.utt_keys


def plans_for(workdir: str | Path, names: list[str],
              params: dict[str, dict[str, Any]]) -> list[StagePlan]:
    """Plans of ``names`` and their upstream stages, upstream first."""
    planner, plans = _Planner(workdir, params), []
    for name in resolve_order(names):
        plans.append(planner.plan(name))
        planner.settle(plans[-1])
    return plans


def _with_audio(names: list[str], corpus, every: bool) -> list[str]:
    """A text-only corpus (no utterance has audio): ``all`` leaves out the stages that need
    audio (or read a stage that does); naming one is an error."""
    if any(u.audio for u in corpus.utterances):
        return names

    def audio_bound(name: str) -> bool:
        stage = get_stage(name)
        return stage.needs_audio or any(audio_bound(s) for s in stage.upstream)

    bound = [n for n in names if audio_bound(n)]
    if bound and not every:
        raise StageError(f"stage(s) {', '.join(bound)} need audio, and this corpus is text-only "
                         "(its manifest gives no audio): extract the text stage")
    if bound:
        log.info("text-only corpus: leaving out %s", ", ".join(bound))
    return [n for n in names if n not in bound]


def extract(workdir: str | Path, stages: list[str], overrides: dict[str, dict[str, Any]] | None = None,
            force: bool = False, workers: int | None = None, gpus: list[int] | None = None,
            scheduler: str | None = None, progress: Callable | None = None,
            reset_params: bool = False, rehash: bool = False) -> list[StageReport]:
    """Compute every missing or stale shard of ``stages`` (``["all"]`` = every stage).

    ``reset_params``: the named stages forget their remembered parameters before ``overrides``.
    ``rehash``: hash every audio file again instead of trusting (size, mtime).
    """
    t0 = time.perf_counter()
    workdir = str(Path(workdir).resolve())  # Dask workers have other working directories
    names = stage_names() if stages == ["all"] else [get_stage(s).name for s in stages]
    params = merged_params(workdir, overrides, names if reset_params else None)
    planner = _Planner(workdir, params, rehash)
    names = _with_audio(names, planner.corpus, stages == ["all"])
    order = resolve_order(names)
    plans = {}
    for name in order:  # upstream first: a stage's keys depend on its upstream stages' keys
        plans[name] = plan = planner.plan(name)
        planner.settle(plan)
        if force and name in names:  # replaced by each shard's writer, never deleted up front
            for sp in plan.shards:
                sp.force, sp.state = True, "missing"
    log.debug("planned %s in %.2f s", ", ".join(order), time.perf_counter() - t0)
    lanes = [order]
    busy = {plan.stage.needs_gpu for plan in plans.values() if plan.pending()}
    if not scheduler and len(busy) == 2:  # CPU and GPU stages both have work
        use_gpus = gpus if gpus is not None else visible_gpus()  # imports torch: only here
        lanes = stage_lanes(order, bool(use_gpus))
        if len(lanes) > 1:
            log.info("CPU stage(s) %s run beside GPU stage(s) %s", ", ".join(lanes[0]),
                     ", ".join(lanes[1]))
            # one core per GPU worker stays for its decoding and writes
            workers = workers or max(1, (os.cpu_count() or 1) - len(use_gpus))
    job = _Job(workdir, planner, threading.Lock(), workers, gpus, scheduler, progress, ClusterPool())
    try:
        done = run_lanes([functools.partial(_bring_up_lane, job, [plans[n] for n in lane]) for lane in lanes])
    finally:
        job.clusters.close()
    reports = {r.stage: r for lane_reports in done for r in lane_reports}
    return [reports[n] for n in order]


@dataclass
class _Job:
    """What every stage of one ``extract`` shares; ``lock`` guards the planner across lanes."""
    workdir: str
    planner: "_Planner"
    lock: threading.Lock
    workers: int | None
    gpus: list[int] | None
    scheduler: str | None
    progress: Callable | None
    clusters: ClusterPool


def _bring_up_lane(job: _Job, plans: list[StagePlan], stop: threading.Event) -> list[StageReport]:
    return [_bring_up(job, plan, stop) for plan in plans]


def _bring_up(job: _Job, plan: StagePlan, stop: threading.Event) -> StageReport:
    """Compute the missing shards of one planned stage, publish it, and report."""
    name = plan.stage.name
    if stop.is_set():
        raise LaneStopped(f"stage {name}: not started (interrupted)")
    pending = plan.pending()
    results = _run(job.workdir, plan, pending, job, stop)
    with job.lock:
        plan = job.planner.plan(name)  # the shards as they are now
    missing = plan.pending()
    if missing:
        raise StageError(f"stage {name}: {len(missing)} shard(s) could not be completed; "
                         "see the log above, then re-run extract (completed shards are kept)")
    publish(job.workdir, plan, list(job.planner.corpus.utterances))
    summary = shard_summary(plan)
    return StageReport(name, plan.identity_key[:16], len(plan.shards),
                       sum(1 for r in results if not r.skipped), len(plan.shards) - len(pending),
                       summary["failed"], sum(r.seconds for r in results), summary["notes"])


def _run(workdir: str, plan: StagePlan, pending, job: _Job,
         stop: threading.Event | None = None) -> list[ShardResult]:
    if not pending:
        return []
    workers, gpus, scheduler, progress = job.workers, job.gpus, job.scheduler, job.progress
    stage = plan.stage
    n_items = sum(len(sp.utts) for sp in pending)
    advance = progress(stage.name, n_items) if progress else (lambda n: None)
    t0 = time.perf_counter()
    use_gpus = (gpus if gpus is not None else visible_gpus()) if stage.needs_gpu else []
    if time.perf_counter() - t0 > 0.1:  # -v: a cold process imports torch here
        log.debug("%s: GPUs visible: %s (%.2f s, importing torch)", stage.name, use_gpus or "none",
                  time.perf_counter() - t0)
    if stage.advice is not None and (advice := stage.advice(plan.config, bool(use_gpus))):
        log.info("%s", advice)
    n = len(use_gpus) if use_gpus else (workers or default_workers(len(pending)))
    results: list[ShardResult] = []
    args = (workdir, stage.name, plan.config, plan.identity)
    # Each process publishes a shard (fsync, rename) in the background while it computes the
    # next one; every shard is published (or its failure raised) before this returns.
    if scheduler or (n > 1 and len(pending) > 1):
        from distributed import as_completed
        with job.clusters.client(n, use_gpus or None, scheduler) as client:
            futures = [client.submit(run_shard, *args, sp, key=f"{stage.name}-{sp.index}-{sp.key[:8]}",
                                     pure=False, background=True) for sp in pending]
            size = {f.key: len(sp.utts) for f, sp in zip(futures, pending)}
            try:
                # this client's loop: left out, as_completed binds to the process's default
                # client, which is the other lane's when two lanes run clusters at once, and
                # hangs once that lane closes its client (dask/distributed#4357)
                for fut in as_completed(futures, loop=client.loop):
                    results.append(fut.result())
                    advance(size[fut.key])
                    _check(stop, stage.name)
            except BaseException:
                _publish_what_is_done(lambda: client.run(wait_published))
                raise
            client.run(wait_published)
            client.run(forget_built)  # a kept worker holds no model into the next stage
    else:
        try:
            for sp in pending:
                _check(stop, stage.name)
                results.append(run_shard(*args, sp, on_item=advance, background=True))
        except BaseException:
            _publish_what_is_done(wait_published)
            raise
        wait_published()
    # Shards another process was writing: wait for its lock, then compute here if it died.
    for sp in pending:
        if not sp.path.exists():
            with shard_lock(sp.path, blocking=True):
                pass
            if not sp.path.exists():
                results.append(run_shard(*args, sp))
    return results


def _check(stop: threading.Event | None, stage: str) -> None:
    if stop is not None and stop.is_set():
        raise LaneStopped(f"stage {stage}: stopped (another stage was interrupted)")


def _publish_what_is_done(wait: Callable[[], Any]) -> None:
    """On the way out of a failed or interrupted run: the shards already completed are still
    published (nothing computed is lost); a failure here is only logged, so that the error that
    stopped the run is the one raised."""
    try:
        wait()
    except Exception as e:  # noqa: BLE001 - secondary to the error in flight
        log.warning("while stopping: a completed shard could not be published (%s)", e)


@dataclass
class StageStatus:
    """One stage of ``status``: its shards by state, failed items, bytes, key, why stale."""
    stage: str
    key: str  # the first 16 hex digits of the stage identity
    params: dict[str, Any]
    shards: dict[str, int]  # complete / stale / missing -> count
    failed: dict[str, str]  # utterance -> reason
    notes: dict[str, str]  # utterance -> remark it was kept with
    bytes: int
    orphans: list[str]
    utterances: int
    why_stale: list[str]


def status(workdir: str | Path, names: list[str] | None = None) -> list[StageStatus]:
    """Per stage: shard states, failed items, bytes, current key and why stale."""
    params = load_params(workdir)
    names = [get_stage(n).name for n in names] if names else stage_names()
    rows = []
    for plan in plans_for(workdir, names, params):
        rows.append(StageStatus(plan.stage.name, plan.identity_key[:16], plan.identity["config"],
                                **shard_summary(plan),
                                orphans=[str(p) for p in orphan_shards(workdir, plan.stage.name)],
                                utterances=sum(len(sp.utts) for sp in plan.shards),
                                why_stale=explain_stale(plan, workdir)))
    return rows
