"""The main job: run reference and candidate on the same token ids, compare, find, report.

Positions are aligned by construction: the reference greedily continues the prompt, and the
whole sequence (prompt + reference continuation) is teacher-forced through both runners in
one pass each. The candidate's own greedy continuation is generated separately, for the
side-by-side view. The candidate may also be an engine dump (``candidate_dump``), aligned by
the token ids its manifest records.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .capture import Captures
from .comparison import Finding, ModelInfo, Report, Thresholds, compare_captures
from .comparison.record import (
    Continuation,
    Continuations,
    MemoryMode,
    ModelSummary,
    Paths,
    QuantizationSummary,
    RunRecord,
    Runtime,
    SchemeCount,
    Tokens,
)
from .errors import InputError
from .heap import release_free_memory
from .jobs import Jobs
from .runner import ModelRunner

ProgressFn = Callable[[str, int, int], None]


@dataclass
class CompareOptions:
    prompt: str | None = "The capital of France is"
    tokens: Sequence[int] | None = None
    generate: int = 8
    device: str = "cpu"
    ref_device: str | None = None
    cand_device: str | None = None
    select: str | Sequence[str] = "*"
    thresholds: Thresholds | None = None
    quant_options: Any = None
    kv_cache: Any = None
    localize: bool = True
    tokenizer: str | None = None  # a HF tokenizer.json used for the reference instead of the GGUF vocabulary
    title: str = ""  # the report's title (default: "layerbisect report")
    labels: dict[str, str] = field(default_factory=dict)  # free-form (name, value) pairs shown with the run
    stream: bool | None = None  # None: stream a side whose FP32 size exceeds its memory budget (streaming.py)
    memory_cap: int | None = None  # bytes of weights per side on its device; default: free device memory
    concurrent: bool | None = None  # run both sides' passes in two threads; None: when their devices differ
    dump_map: str | None = None  # name map for a foreign engine dump (SGLang, TensorRT-LLM); default by format
    expected: bool = True  # run the expected lane: noise-aware verdicts (expected/, comparison/noise.py)
    dump_prompt: bool = False  # with a dump: ``prompt`` was given by the user and must encode to the dump's first ids


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _tokenizer_fingerprint(runner: ModelRunner) -> str | None:
    tok = runner.tokenizer
    try:
        return tok.fingerprint() if tok is not None else None
    except Exception:  # a tokenizer without a fingerprint is compared by ids only
        return None


def model_info(runner: ModelRunner) -> ModelInfo:
    c = runner.config
    caps = [m.softcap for m in (ls.mixer for ls in c.layers) if getattr(m, "softcap", None) is not None]
    return ModelInfo(
        arch=c.arch,
        n_layers=c.n_layers,
        final_softcap=c.final_softcap,
        attn_softcap=caps[0] if caps else None,
        vocab_size=c.vocab_size,
    )


def compare(
    ref: str | Path,
    cand: str | Path | None = None,
    *,
    candidate_dump: str | Path | None = None,
    options: CompareOptions | None = None,
    progress: ProgressFn | None = None,
    status: Callable[[str], None] | None = None,
) -> Report:
    """Run both sides and return the ``Report`` (findings first; ``report.df`` per point × token)."""
    from .api import check_candidate, open_runner, resolve_tokens, use_tokenizer

    o = options or CompareOptions()
    say = status or (lambda s: None)
    timings: dict[str, float] = {}
    if (cand is None) == (candidate_dump is None):
        raise InputError("candidate", "give exactly one of a candidate checkpoint or --candidate-dump")

    t0 = time.perf_counter()
    ref_dev, cand_dev = o.ref_device or o.device, o.cand_device or o.device
    share = 2 if cand is not None and torch.device(ref_dev) == torch.device(cand_dev) else 1
    concurrent = o.concurrent if o.concurrent is not None else cand is not None and share == 1
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    def load_reference() -> ModelRunner:
        t = time.perf_counter()
        runner = _memory_mode(open_runner(ref, device=ref_dev, progress=progress), o, share).activate()
        use_tokenizer(runner, o.tokenizer)
        timings["load_reference"] = time.perf_counter() - t
        return runner

    def load_candidate() -> ModelRunner:
        t = time.perf_counter()
        runner = _memory_mode(
            open_runner(
                cand,  # type: ignore[arg-type]
                device=cand_dev,
                progress=progress,
                options=o.quant_options,
                kv_cache=o.kv_cache,
                role="candidate",
            ),
            o,
            share,
        ).activate()
        timings["load_candidate"] = time.perf_counter() - t
        return runner

    cand_runner: ModelRunner | None = None
    if cand is not None and concurrent and share == 1:  # two devices: each side loads onto its own at once
        say("loading reference and candidate (both sides at once)")
        ref_runner, cand_runner = _both(load_reference, load_candidate, True)
        timings["load_both_wall"] = time.perf_counter() - t0
    else:
        say("loading reference")
        ref_runner = load_reference()

    dump_caps: Captures | None = None
    if candidate_dump is not None:
        from .engines.dump import check_dump_model, load_dump

        dump_caps = load_dump(
            candidate_dump,
            token_ids=list(o.tokens) if o.tokens else None,
            name_map=o.dump_map,
            config=ref_runner.config,
        )
        check_dump_model(dump_caps, ref_runner.config)
        from .capture import Selector
        from .preflight import possible_points

        sel = Selector(o.select)
        if not any(sel(n) for n in set(dump_caps.tensors) & set(possible_points(ref_runner.config))):
            raise InputError(str(dump_caps.meta.get("dump", candidate_dump)), "holds none of the reference's capture "
                             f"points{' selected by --select' if o.select not in (None, '*') else ''}: "
                             "nothing to compare (its points: " + (", ".join(sorted(dump_caps.tensors)[:5]) or "none")
                             + ")")
    else:
        if cand_runner is None:
            say("loading candidate")
            cand_runner = load_candidate()
        check_candidate(ref_runner, cand_runner)
        compute = getattr(getattr(cand_runner, "options", None), "compute_dtype", "fp32")
        if compute != "fp32" and cand_runner.streaming:
            raise InputError("--compute-dtype", f"{compute} needs a resident candidate (--resident)")

    findings: list[Finding] = []
    if dump_caps is not None and not o.tokens and dump_caps.token_ids:
        prompt_ids = list(dump_caps.token_ids)
        gen = 0
        if o.dump_prompt and o.prompt and ref_runner.tokenizer is not None:  # the user's text is checked, not ignored
            mine = ref_runner.tokenizer.encode(o.prompt)
            at = next((i for i, (a, b) in enumerate(zip(mine, prompt_ids)) if a != b), None)
            if at is not None or len(mine) > len(prompt_ids):
                at = at if at is not None else len(prompt_ids)
                raise InputError("--prompt", f"encodes to {len(mine)} ids that differ from the dump's "
                                 f"{len(prompt_ids)} at position {at}: the dump was captured from other text "
                                 "(omit --prompt to use the dump's ids)")
    else:
        prompt_ids = resolve_tokens(ref_runner, o.prompt if not o.tokens else None, o.tokens)
        gen = o.generate
        from .preflight import check_length

        check_length(len(prompt_ids), gen, ref_runner.config)
    if cand_runner is not None:
        findings += tokenizer_findings(ref_runner, cand_runner, o, prompt_ids)
        spent = getattr(cand_runner.tokenizer, "spent", None)
        if spent is not None:  # the candidate's text side is done (the reports decode with the reference's)
            cand_runner.tokenizer = spent()
            release_free_memory()
        calibrate = getattr(cand_runner, "calibrate_kv", None)
        if calibrate is not None:  # --kv-scales calibrate: the chosen first pass, before anything else runs
            say("calibrating the KV-cache scales")
            calibrate(prompt_ids)

    t0 = time.perf_counter()
    say(f"greedy {gen} tokens" + (" (both sides at once)" if concurrent else ""))
    ref_new, cand_new = _both(
        lambda: ref_runner.generate(prompt_ids, gen) if gen else [],
        (lambda: cand_runner.generate(prompt_ids, gen)) if cand_runner is not None and gen else (lambda: []),
        concurrent,
    )
    timings["generate"] = time.perf_counter() - t0
    ids = prompt_ids + ref_new
    tok = ref_runner.tokenizer  # what the record shows as text, read now: the tokenizer goes next

    def text(xs: list[int]) -> str:
        return tok.decode(xs) if tok is not None and xs else ""

    shown = (tuple(tok.token_strings(ids)) if tok is not None else tuple(str(i) for i in ids),
             text(ref_new), text(cand_new))
    if cand_runner is not None and hasattr(tok, "spent"):  # the reference's text side is done too (~0.3 GiB)
        ref_runner.tokenizer = tok.spent()
        release_free_memory()

    t0 = time.perf_counter()
    both = cand_runner is not None and concurrent
    if both:
        say("capture passes (both sides at once, teacher-forced)")
        (ref_caps, timings["run_reference"]), (cand_caps, timings["run_candidate"]) = _both(
            lambda: _timed(ref_runner.run, ids, select=o.select),
            lambda: _timed(cand_runner.run, ids, select=o.select),  # type: ignore[union-attr]
            True,
        )
        timings["run_both_wall"] = time.perf_counter() - t0
    else:
        say("reference: capture pass")
        ref_caps = ref_runner.run(ids, select=o.select)
        timings["run_reference"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if cand_runner is not None:
        if not both:
            say("candidate: capture pass (teacher-forced)")
            cand_caps = cand_runner.run(ids, select=o.select)
            timings["run_candidate"] = time.perf_counter() - t0
    else:
        from .engines.dump import align_to_dump

        assert dump_caps is not None
        cand_caps = dump_caps
        # A dump may hold only some positions: compare the reference rows at those positions.
        ref_caps = align_to_dump(ref_caps, dump_caps)
        timings["run_candidate"] = time.perf_counter() - t0
    for caps, runner in ((ref_caps, ref_runner), (cand_caps, cand_runner)):
        if runner is not None and cand_runner is None:  # with both runners, tokenizer_findings says more
            fp = _tokenizer_fingerprint(runner)
            if fp:
                caps.meta["tokenizer_fingerprint"] = fp
    if cand_runner is None and ref_runner.tokenizer is not None:  # a dump's ids, read with the reference's vocabulary
        for caps in (ref_caps, cand_caps):
            caps.meta["token_pieces"] = ref_runner.tokenizer.token_strings(list(caps.token_ids))

    if not ref_caps.names():
        raise InputError("--select", f"{o.select!r} selected no capture point of this model")
    info = model_info(ref_runner)
    thresholds = o.thresholds
    if thresholds is None:
        from .comparison.gate import GateConfig

        thresholds = GateConfig.builtin().comparison_thresholds()
    # what reads only the runners and the captures: at once when concurrent, else where it always ran (jobs.py)
    jobs = _submit_jobs(Jobs(concurrent and cand_runner is not None, timings, [ref_dev, cand_dev]), o, ref_runner,
                        cand_runner, ids, ref_caps, info, thresholds, say)
    try:
        t0 = time.perf_counter()
        if not jobs.concurrent and cand_runner is not None and torch.device(cand_dev).type == "cpu":
            _release_kept_weights(cand_runner)  # the comparison reads captures only; later stages decode per call
        say("comparing")
        dev = next((d for d in (ref_dev, cand_dev) if torch.device(d).type == "cuda"), None)  # float64 on a GPU
        comparison = compare_captures(ref_caps, cand_caps, info, thresholds=thresholds, device=dev)
        if dump_caps is not None:
            _dump_logits_at_sampled_positions(comparison, ref_caps, dump_caps, candidate_dump, o, ref_runner,
                                              thresholds)
        timings["compare"] = time.perf_counter() - t0

        record = RunRecord(
            title=o.title,
            labels=tuple(sorted((str(k), str(v)) for k, v in o.labels.items())),
            paths=Paths(
                str(ref),
                str(cand if cand is not None else candidate_dump),
                "checkpoint" if cand is not None else "engine dump",
            ),
            model=ModelSummary.from_spec(ref_runner.config),
            tokens=Tokens(
                ids=tuple(ids),
                strings=shown[0],
                n_prompt=len(prompt_ids),
                prompt=o.prompt if not o.tokens and candidate_dump is None else None,  # a dump brings its own ids
            ),
            continuations=Continuations(
                Continuation(shown[1], tuple(ref_new)), Continuation(shown[2], tuple(cand_new))
            ),
        )
        if cand_runner is not None:
            findings += _load_findings(cand_runner)
            record = replace(record, quantization=_quant_summary(cand_runner))
        report = Report(comparison, record=record)
        for f in findings:
            report.add_finding(f)
        if dump_caps is not None:  # nothing to patch: name a cause from the comparison's shape alone
            from .audit.causes import annotate_dump
            from .comparison.record import Audits

            cause = annotate_dump(report, ref_runner.config)
            if cause:
                report.put(audits=Audits(cause=cause))

        from .comparison.recurrent import add_state_section

        add_state_section(report, ref_caps, cand_caps, len(prompt_ids))
        calib = getattr(cand_runner, "kv_calibration", None)
        if calib is not None:
            from .audit.kv_calibration import audit_kv_calibration

            audit_kv_calibration(report, calib, ref_caps)

        if cand_runner is not None and "logits" in ref_caps.tensors and "logits" in cand_caps.tensors:
            from .comparison import kld

            stats = kld.kld_stats(ref_caps.tensors["logits"], cand_caps.tensors["logits"], ids)
            if stats is not None:
                report.put(kld=stats)
        if cand_runner is not None:
            from .audit.overflow import annotate_nonfinite
            from .comparison.softcap import detect_softcap_missing

            for f in detect_softcap_missing(ref_caps, cand_caps, ref_runner.config, cand_runner.config):
                report.add_finding(f)
            annotate_nonfinite(report, ref_caps, cand_runner)
        exp_run = jobs.result("expected_lane") if "expected_lane" in jobs else None
        loc = None
        if o.localize and cand_runner is not None:
            from .localize import localize

            patched = jobs.result("localize")
            if patched is not None:
                with torch.no_grad():  # the parameters may require grad: no autograd graph may keep temporaries
                    loc = jobs.timed("localize", lambda: localize(
                        report, ref_runner, cand_runner, ids, ref_caps, status=say, patched=patched,
                        expected=(exp_run.layers, exp_run.modules) if exp_run is not None else None))
            if loc is not None:
                report.put(localization=loc)
        if exp_run is not None:
            from .expected import reconcile, summarize

            summary = summarize(report, exp_run, loc)
            report.put(noise=summary)
            reconcile(report, summary)
        if loc is not None and loc.layers and cand_runner is not None:
            from .audit import after_localize

            with torch.no_grad():
                measured = jobs.result("audit")
                report.put(audits=jobs.timed("audit", lambda: after_localize(
                    report, ref_runner, cand_runner, ref_caps, loc, measured=measured)))
        from .streaming import streaming_meta

        memory = tuple(
            MemoryMode.from_meta(side, streaming_meta(runner))
            for side, runner in (("reference", ref_runner), ("candidate", cand_runner))
            if runner is not None
        )
        report.put(
            runtime=Runtime(
                timings_s={k: round(v, 3) for k, v in timings.items()},
                peak_memory_bytes=_peak_memory(),
                memory=memory,
                concurrent=concurrent,
            )
        )
        return report
    finally:
        jobs.close()
        for caps in (ref_caps, cand_caps):  # the device copies the jobs and the comparison read (Captures.on)
            if caps is not None:
                caps.drop_copies()


def _submit_jobs(jobs: Jobs, o: CompareOptions, ref_runner: ModelRunner, cand_runner: ModelRunner | None,
                 ids: list[int], ref_caps: Captures, info: ModelInfo, thresholds: Thresholds,
                 say: Callable[[str], None]) -> Jobs:
    """The expected lane (the reference's device), the activation patching (the candidate's device) and the audits'
    measurements (the weight pairs on both), as jobs (``jobs.py``); none for an engine dump (nothing to patch)."""
    if cand_runner is None:
        return jobs
    if o.expected or o.localize:  # the reference's points on each device the jobs read them on: copied once, here
        for dev in (ref_runner.device, cand_runner.device):
            ref_caps.on(dev)
    if jobs.concurrent:
        say("expected lane, localization and audits (both devices at once, beside the comparison)")
    if o.expected:
        def lane() -> Any:
            from .expected import run_expected

            if not jobs.concurrent:
                say("expected lane: the reference's weights in the candidate's format")
            with torch.no_grad():  # as localization: no autograd graph may keep the lane's temporaries
                return jobs.timed("expected_lane", lambda: run_expected(
                    ref_runner, cand_runner, ids, ref_caps, info, thresholds, o.select))

        jobs.submit("expected_lane", lane)
    if o.localize:
        from .audit import measure
        from .localize import can_patch, patch

        def patched() -> Any:
            if not jobs.concurrent:
                release_free_memory(ref_runner.device, cand_runner.device)  # the comparison's float64 copies
                say("localizing (activation patching)")
            return jobs.timed("localize", lambda: patch(ref_caps, ref_runner, cand_runner, len(ids)))

        streamed = ref_runner.streaming or cand_runner.streaming

        def measured() -> Any:
            if not jobs.concurrent:
                release_free_memory(ref_runner.device, cand_runner.device)  # the patching's layer copies
                say("auditing weights and scales")
            elif streamed:  # a streamed side reads its layers one at a time: one walk over them after the other
                jobs.result("localize")
            devices = [ref_runner.device, cand_runner.device] if jobs.concurrent else None  # the pairs: on both
            return jobs.timed("audit", lambda: measure(ref_caps, ref_runner, cand_runner, devices))

        jobs.submit("localize", patched)
        if can_patch(ref_caps, ref_runner.config) and ref_runner.config.n_layers:  # the audits follow a localization
            jobs.submit("audit", measured)
    return jobs


def _dump_logits_at_sampled_positions(
    comparison: Any,
    ref_caps: Captures,
    dump_caps: Captures,
    dump: str | Path | None,
    o: CompareOptions,
    ref_runner: ModelRunner,
    thresholds: Any,
) -> None:
    """Engines compute logits for the sampled rows only (vLLM, SGLang: the last prompt position and
    each decode step), so a dump's ``logits`` cover a subset of its positions and are left out of
    the point comparison. Compare them at the positions they have: KL, top-1, top-5 there."""
    from .engines.dump import load_dump

    if comparison.logits is not None or "logits" not in dump_caps.meta.get("incomplete", {}):
        return
    if "logits" not in ref_caps.tensors or dump is None:
        return
    part = load_dump(
        dump, select=["logits"], keep_incomplete=True, name_map=o.dump_map, config=ref_runner.config
    )
    have = part.meta.get("row_positions", {}).get("logits", [])
    positions = [int(p) for p in dump_caps.meta.get("positions", [])]
    index = {p: r for r, p in enumerate(positions)}
    keep = [(i, index[p]) for i, p in enumerate(have) if p in index]
    if not keep or "logits" not in part.tensors:
        return
    ref_logits = ref_caps.tensors["logits"]
    if part.tensors["logits"].shape[1] != ref_logits.shape[1]:
        return  # a vocabulary mismatch is reported by the point comparison's shape checks elsewhere
    full = torch.full(ref_logits.shape, float("nan"))
    full[[r for _, r in keep]] = part.tensors["logits"][[i for i, _ in keep]]
    sub = compare_captures(
        Captures(tensors={"logits": ref_logits}, token_ids=list(ref_caps.token_ids)),
        Captures(tensors={"logits": full}, token_ids=list(dump_caps.token_ids)),
        comparison.info,
        thresholds=thresholds,
        positions=[r for _, r in keep],
    )
    comparison.logits, comparison.logits_df = sub.logits, sub.logits_df
    comparison.only_ref = [n for n in comparison.only_ref if n != "logits"]
    comparison.cand_meta["logits_positions"] = [positions[r] for _, r in keep]


def _memory_mode(runner: ModelRunner, o: CompareOptions, share: int) -> ModelRunner:
    """Resident or streamed (``streaming.py``): set before ``activate``, which decides."""
    runner.stream, runner.memory_cap, runner.memory_share = o.stream, o.memory_cap, share
    return runner


def _timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def _release_kept_weights(runner: ModelRunner) -> None:
    """Drop the FP32 copies the candidate's quantized linears keep between calls and keep none from now on
    (``QuantLinear.keep_weight``): after the passes each linear runs a few times (patching, audit), and decoding
    again (the same bits; 0.1 s for all of Gemma 3 270M's FP8 linears) costs less than holding them (0.37 GiB,
    where a CPU bisect's peak stood). The freed heap goes back to the system."""
    from .candidates.qlinear import release_kept_weights

    release_kept_weights(getattr(runner, "quant_linears", dict)().values(), keep_after=False)
    release_free_memory(runner.device)


def _both(fa: Callable[[], Any], fb: Callable[[], Any], concurrent: bool) -> tuple[Any, Any]:
    """fa() and fb(), in two threads when ``concurrent`` (torch releases the GIL in its kernels)."""
    if not concurrent:
        return fa(), fb()
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="bisect-side") as pool:
        a, b = pool.submit(fa), pool.submit(fb)
        return a.result(), b.result()


def _peak_memory() -> dict[str, int]:
    out = {"host_rss": _peak_rss_bytes()}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            out[f"cuda:{i}"] = int(torch.cuda.max_memory_allocated(i))
    return out


def tokenizer_findings(ref: ModelRunner, cand: ModelRunner, o: CompareOptions, ids: list[int]) -> list[Finding]:
    """How the two tokenizers segment the prompt (``tokenizer.segmentation``); both sides always run ``ids``.

    The compared ids are the same on both sides here (the reference's encoding, or ``--tokens``), so a
    difference is never critical: a warning with ``--tokens`` or when both segment the prompt alike (only
    the vocabularies differ), an error when the candidate's own tokenizer would feed an engine other ids.
    Ids that differ *between the compared sides* (an engine dump) are ``findings.detect_tokenizer_mismatch``.
    """
    rt, ct = ref.tokenizer, cand.tokenizer
    if rt is None or ct is None:
        return []
    from .tokenizer import Segmentation, segmentation

    show = Segmentation.show
    fp_r, fp_c = _tokenizer_fingerprint(ref), _tokenizer_fingerprint(cand)
    if o.tokens or not o.prompt:
        body = ids[1:] if ids and rt.bos_id is not None and ids[0] == rt.bos_id else ids
        text, source = rt.decode(body), "--tokens"
    else:
        text, source = o.prompt, "the reference's encoding of the prompt"
    seg = segmentation(rt, ct, text)
    if seg.first is None and fp_r == fp_c:
        return []
    ev = {"text": text, "ref_ids": list(seg.ref_ids), "cand_ids": list(seg.cand_ids),
          "ref_pieces": list(seg.ref_pieces), "cand_pieces": list(seg.cand_pieces), "first": seg.first,
          "ref_fingerprint": fp_r, "cand_fingerprint": fp_c, "ids_from": source}
    same_run = f"Both sides ran the same ids ({source}), so the comparison itself stands."
    if seg.first is None:
        return [Finding(
            severity="warning", kind="tokenizer_mismatch",
            title=f"Tokenizers differ, but both segment the prompt the same way ({len(seg.ref_ids)} tokens)",
            detail=f"Vocabulary fingerprints {fp_r} (reference) ≠ {fp_c} (candidate); on {text!r} both give "
            f"{show(seg.ref_pieces)}. {same_run} Other text may still encode differently.",
            evidence=ev,
        )]
    r_at, c_at = seg.at(seg.first)
    return [Finding(
        severity="warning" if o.tokens else "error", kind="tokenizer_mismatch",
        title=f"The candidate's tokenizer segments the prompt differently: {len(seg.ref_ids)} vs "
        f"{len(seg.cand_ids)} tokens, first at position {seg.first} ({r_at} vs {c_at})",
        token_index=seg.first,
        detail=f"{text!r} — reference ({len(seg.ref_ids)}): {show(seg.ref_pieces)}; candidate's "
        f"tokenizer ({len(seg.cand_ids)}): {show(seg.cand_pieces)}. First difference at position "
        f"{seg.first}: reference {r_at}, candidate {c_at}. {same_run} An engine that encodes text with the "
        "candidate's tokenizer feeds the model other ids.",
        evidence=ev,
    )]


def _load_findings(cand: ModelRunner) -> list[Finding]:
    notes = getattr(cand, "load_notes", {}) or {}
    out: list[Finding] = []
    ck = getattr(cand, "checkpoint", None)
    if ck is not None:  # NaN / zero / negative scales: critical, named by tensor (audit/scales.py)
        from .audit import scales

        out += scales.findings(scales.scan_checkpoint(ck), getattr(cand, "linear_names", None))
    all_missing = notes.get("missing") or []
    mkinds = notes.get("missing_kinds") or {}
    for what in ("norm", "scale"):  # norms run as the identity, scale parameters as 1.0
        missing = [m for m in all_missing if mkinds.get(m, "norm") == what]
        if not missing:
            continue
        layers = sorted({int(m.split(".")[1]) for m in missing if m.startswith("layers.")})
        kinds = sorted({m.split(".", 2)[-1] if m.startswith("layers.") else m for m in missing})
        first = kinds[0].removesuffix(".weight") if kinds else None
        run_as = "identity norms" if what == "norm" else "every scale at 1.0"
        out.append(
            Finding(
                severity="critical",
                kind="missing_tensor",
                title=f"Checkpoint lacks {len(missing)} {what} tensors ({', '.join(kinds)}); run with {run_as}",
                point=f"layers.{layers[0]}.{first}" if layers else None,
                layer=layers[0] if layers else None,
                op=first,
                token_index=None,
                detail=f"missing in {len(layers)} layers: {', '.join(missing[:6])}"
                + (" ..." if len(missing) > 6 else ""),
                evidence={"missing": missing, "kind": what},
            )
        )
    unused = notes.get("unused") or []
    if unused:
        out.append(
            Finding(
                severity="warning",
                kind="unused_tensor",
                title=f"{len(unused)} checkpoint tensors are not used by the graph",
                point=None,
                layer=None,
                op=None,
                token_index=None,
                detail=", ".join(unused[:8]) + (" ..." if len(unused) > 8 else ""),
                evidence={"unused": unused},
            )
        )
    return out


def _quant_summary(cand: ModelRunner) -> QuantizationSummary | None:
    own = getattr(cand, "quant_summary", None)
    if callable(own):  # the GGUF candidate: GGML types of its linears
        d = own()
        return QuantizationSummary(
            format=d["format"], source=d["source"],
            linear_schemes=tuple(SchemeCount(k, v) for k, v in d["linear_schemes"].items()), kv_cache=None,
        )
    ck = getattr(cand, "checkpoint", None)
    if ck is None:
        return None
    q = ck.quant
    schemes: dict[str, int] = {}
    for hf_name in getattr(cand, "linear_names", {}).values():
        s = q.scheme_for(hf_name)
        key = f"{s.weight}/{s.act}"
        schemes[key] = schemes.get(key, 0) + 1
    kv = getattr(cand, "kv_quant", None)
    return QuantizationSummary(
        format=str(q.format_name),
        source=str(q.source),
        linear_schemes=tuple(SchemeCount(k, n) for k, n in sorted(schemes.items())),
        kv_cache=None if kv is None else f"fp8_e4m3 ({kv.source} scales)",
    )
