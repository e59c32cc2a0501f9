"""``edgeport ship``: a recipe becomes stages — merge adapters → export → quantize each variant
→ parity gates → benchmark → package → (verify on other platforms) — every step cached by
content.  A variant that fails its gate stops there with its figures; the others go on;
the run ends non-zero when anything failed.  Stages are called as library functions; this
module only sequences them and writes the summary.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..artifact import Artifact
from ..errors import (EdgeportError, OutputExistsError, ParityError, RegressionError, SourceError,
                      StoppedByUser)
from ..outputs import SHIP_FOLDER, check_output, instead_say, make_folders, remove_created_folders
from ..vocabulary import DEFAULT_BATCH_SIZES, DEFAULT_MAX_PARITY_DROP, DEFAULT_MIN_DURATION_S, DEFAULT_ROUNDS
from .cache import StepCache, folder_digest
from .recipe import BUNDLED_DOCSTRINGS, Recipe, Variant

SUMMARY = "ship-summary.json"
EXPORT = "export"


@dataclass
class VariantResult:
    name: str
    precision: str
    artifact: str | None = None
    passed: bool = False
    failure: str | None = None
    failure_kind: type[EdgeportError] = ParityError     # what its failure exits as (not in the summary)
    regressed: bool = False         # passed its gates, then fell behind gates.previous_report
    parity: dict = field(default_factory=dict)
    size_bytes: int | None = None
    p50_ms: float | None = None
    speedup_vs_pytorch: float | None = None
    size_vs_pytorch: float | None = None
    bundle: str | None = None
    platforms: dict = field(default_factory=dict)
    cached: list[str] = field(default_factory=list)


@dataclass
class ShipResult:
    recipe: str
    output: str
    variants: list[VariantResult]
    bench_json: str | None = None
    bench_html: str | None = None
    bench_warnings: list[str] = field(default_factory=list)     # busy machine, slow thread wake: how to read speeds
    triton: str | None = None
    failures: list[str] = field(default_factory=list)
    failure_kinds: list[type[EdgeportError]] = field(default_factory=list)     # one per failure
    seconds: float = 0.0
    plan: list[tuple[str, bool]] = field(default_factory=list)     # (step, cached), what --dry-run reports

    def to_dict(self) -> dict:
        return {"recipe": self.recipe, "output": self.output, "seconds": round(self.seconds, 1),
                "variants": [_public(v) for v in self.variants], "bench_json": self.bench_json,
                "bench_html": self.bench_html, "bench_warnings": self.bench_warnings, "triton": self.triton,
                "failures": self.failures}

    def add_failures(self, failures: list[str], kind: type[EdgeportError]) -> None:
        self.failures += failures
        self.failure_kinds += [kind] * len(failures)

    def raise_for_failure(self) -> None:
        """One error for every failure, exiting as the first does: a gate missed (9), a regression
        (16), or a step's own error (bad calibration data: 10)."""
        if self.failures:
            error = self.failure_kinds[0] if self.failure_kinds else ParityError
            raise error(f"{len(self.failures)} step(s) failed: " + "; ".join(self.failures))


def _public(variant: VariantResult) -> dict:
    record = asdict(variant)
    del record["failure_kind"]
    return record


def _gate_failures(gates: dict, parity: dict, speed: dict | None = None) -> list[str]:
    """The recipe's gates against the parity a stage recorded (and, for ``min_speedup``, the
    paired speed-up over FP32 quantize measured: its interval's lower end must reach it)."""
    figures = parity.get("sentence_embedding") or next(iter(parity.get("outputs", {}).values()), {})
    generation = parity.get("generation") or {}
    checks = [("min_cosine", figures.get("min_cosine"), lambda v, t: v >= t),
              ("min_p01_cosine", figures.get("p01_cosine"), lambda v, t: v >= t),
              ("max_abs_error", figures.get("max_abs_err"), lambda v, t: v <= t),
              ("min_top1_agreement", figures.get("top1_agreement"), lambda v, t: v >= t),
              ("max_token_disagreement", None if "token_agreement" not in generation
               else 1 - generation["token_agreement"], lambda v, t: v <= t),
              ("max_perplexity_increase", generation.get("perplexity_increase"), lambda v, t: v <= t),
              ("min_speedup", (speed or {}).get("ci95", [None])[0] if (speed or {}).get("measured") else None,
               lambda v, t: v >= t)]
    failures = []
    for name, value, ok in checks:
        if name not in gates:
            continue
        if value is None and name == "min_speedup":
            failures.append(f"min_speedup {gates[name]:.10g} cannot be checked: quantize measured no speed-up here "
                            f"({(speed or {}).get('reason', 'no speed record')})")
        elif value is None:        # the recipe check refuses such gates; a record without the figure fails too
            failures.append(f"{name} {gates[name]:.10g} cannot be checked: the parity record has no such figure")
        elif not ok(value, gates[name]):
            # the threshold with up to ten digits: 0.9999999 as written, not rounded to 1
            failures.append(f"{name} {gates[name]:.10g} not met ({value:.6g}"
                            + (f": the lower end of the 95% interval of {speed['speedup']:.3g}x over FP32)"
                               if name == "min_speedup" else ")"))
    return failures


class Shipment:
    """One run of a recipe."""

    def __init__(self, recipe: Recipe, force: bool, progress: Callable[[str], None]):
        self.recipe = recipe
        self.root = recipe.output
        self.cache = StepCache(self.root, force)
        self.say = progress
        self.plan: list[tuple[str, bool]] = []      # (step, cached) for --dry-run
        self.finished: list[str] = []               # steps whose output is complete (run or cached)

    def step(self, name: str, key: str, output: Path, run: Callable[[], None], dry_run: bool,
             still_valid: Callable[[], bool] = lambda: True) -> bool:
        """Run ``run`` unless cached; returns whether it was a cache hit.  ``still_valid``: what
        the cache record cannot tell (a step's second file, what an output was made from)."""
        cached = self.cache.hit(name, key, output) and still_valid()
        self.plan.append((name, cached))
        if dry_run:
            return cached
        if cached:
            self.say(f"[cached] {name}")
            self.finished.append(name)
            return True
        self.say(f"[run] {name}")
        self.cache.forget(name)
        run()
        self.cache.store(name, key, output)
        self.finished.append(name)
        return False

    # ------------------------------------------------------------------ stages

    def source(self, dry_run: bool) -> Path:
        recipe = self.recipe
        model = recipe.source_model
        if not recipe.adapters:
            return model
        from ..export.lora import MergeOptions, merge

        merged = self.root / "merged"
        key = self.cache.key("merge", base=folder_digest(model), adapters=[folder_digest(Path(a)) for a in recipe.adapters],
                             weights=recipe.weights)
        self.step("merge", key, merged,
                  lambda: merge(model, merged, MergeOptions(list(recipe.adapters), list(recipe.weights), force=True),
                                progress=self.say), dry_run)
        return merged

    def export(self, source: Path, dry_run: bool) -> Path:
        from ..export.onnx import ExportOptions, export_onnx

        out = self.root / EXPORT
        options = ExportOptions(task=self.recipe.task, force=True,
                                **({"opset": self.recipe.opset} if self.recipe.opset else {}))
        # A plan (--dry-run) before the merge ran has no merged folder yet: the export will run.
        digest = folder_digest(source) if source.exists() else "not made yet"
        key = self.cache.key("export", source=digest, task=options.task, opset=options.opset)
        hit = self.step("export", key, out, lambda: export_onnx(source, out, options, progress=self.say), dry_run,
                        still_valid=lambda: not _weights_differ(source, out))
        if not hit and not dry_run and (_weights_differ(source, out) or folder_digest(source) != digest):
            # the source was rewritten while it was read: the export may hold other weights
            # than the key names (a later run, the source back as it was, took it as cached)
            self.cache.forget("export")
            raise SourceError(f"the source model '{source}' changed while ship exported it: the export may hold "
                              "weights of another version; run ship again once the source is complete")
        return out

    def variant(self, variant: Variant, fp32: Path, dry_run: bool) -> VariantResult:
        result = VariantResult(variant.name, variant.precision)
        if variant.precision == "fp32":
            result.artifact = str(fp32)
            result.passed = dry_run
            return result if dry_run else self._gate(variant, result, "export")
        from ..quantize import QuantizeOptions, quantize

        out = self.root / variant.name
        calibration, calibration_digest = self._calibration(variant, dry_run)
        budget = variant.gates if variant.accuracy_aware else {}
        options = QuantizeOptions(mode=variant.precision, target=variant.target, calib=calibration,
                                  calibration_method=variant.calibration_method, force=True,
                                  min_cosine=budget.get("min_cosine"), min_p01_cosine=budget.get("min_p01_cosine"),
                                  max_abs_error=budget.get("max_abs_error"),
                                  min_top1_agreement=budget.get("min_top1_agreement"),
                                  max_token_disagreement=variant.gates.get("max_token_disagreement"),
                                  max_perplexity_increase=variant.gates.get("max_perplexity_increase"))
        manifest = _digest(fp32)
        key = self.cache.key(f"quantize-{variant.name}", input=manifest, options=asdict(options),
                             calibration=calibration_digest)
        try:
            hit = self.step(f"quantize {variant.name}", key, out,
                            lambda: quantize(fp32, out, options, progress=self.say), dry_run)
        except EdgeportError as exc:
            result.failure, result.failure_kind = f"{variant.name}: {exc}", type(exc)
            return result
        if hit:
            result.cached.append("quantize")
        result.artifact = str(out)
        if dry_run:
            result.passed = True          # planned as if it passes: the plan lists what follows it
            return result
        return self._gate(variant, result, "quantize")

    def _calibration(self, variant: Variant, dry_run: bool) -> tuple[str | None, str | None]:
        """The variant's calibration data and its digest; the bundled docstrings are written into
        the cache folder first (not by a --dry-run, which writes nothing)."""
        if variant.calibration != BUNDLED_DOCSTRINGS:
            return variant.calibration, folder_digest(Path(variant.calibration)) if variant.calibration else None
        import hashlib

        from ..data import stdlib_sentences

        path = self.root / ".ship-cache" / "stdlib-docstrings.txt"
        text = "\n".join(stdlib_sentences(200, split="calib")) + "\n"
        if not dry_run and (not path.is_file() or path.read_text(encoding="utf-8") != text):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        return str(path), hashlib.sha256(text.encode()).hexdigest()

    def _gate(self, variant: Variant, result: VariantResult, stage: str) -> VariantResult:
        artifact = Artifact.load(result.artifact)
        parity = artifact.manifest.parity.get(stage, {})
        result.parity = parity
        result.size_bytes = artifact.size_bytes()
        failures = _gate_failures(variant.gates, parity, artifact.manifest.precision.get("speed"))
        if failures:
            result.failure = f"{variant.name}: gate failed: {'; '.join(failures)}"
            self.say(f"  {result.failure}")
        else:
            result.passed = True
        return result

    def bench_options(self):
        from ..bench.runner import BenchOptions, ReportFiles
        from ..bench.scenarios import Settings

        config = self.recipe.bench
        # The recipe's keys as the options bench refuses where they would be ignored (a causal LM...).
        given = frozenset(option for key, option in (("rounds", "--rounds"), ("min_duration", "--min-duration"),
                                                     ("batch_sizes", "--batch-sizes")) if key in config)
        return BenchOptions(scenarios=config.get("scenarios", ["single-stream"]), given=given,
                            batch_sizes=config.get("batch_sizes", list(DEFAULT_BATCH_SIZES)),
                            settings=Settings(rounds=config.get("rounds", DEFAULT_ROUNDS),
                                              min_duration=config.get("min_duration", DEFAULT_MIN_DURATION_S)),
                            reports=ReportFiles(str(self.root / "bench.json"), str(self.root / "bench.html"),
                                                force=True))

    def check_exported(self, fp32: Path, dry_run: bool) -> None:
        """What the recipe asks that the exported model cannot give, before any variant is made
        rather than after all: the bench step's refusals (a sweep of sequence lengths for a model
        that takes no text, a minimum duration for a causal LM...), Triton or emulated platforms
        for a causal LM."""
        if dry_run:
            return
        from ..bench.runner import check_bench
        from ..errors import UnsupportedModelError

        check_bench([str(fp32)], self.bench_options())
        if _task(fp32) == "text-generation":
            asked = (["package.formats triton"] if "triton" in self.recipe.formats else []) + \
                [f"verify.platforms {p}" for p in self.recipe.platforms]
            if asked:
                raise UnsupportedModelError(f"{', '.join(asked)}: not for a causal LM (Triton repositories and the "
                                            "emulated check are made for encoders); remove them from the recipe")

    def bench(self, passed: list[VariantResult], dry_run: bool) -> tuple[Path, Path] | None:
        if not passed:
            return None
        from ..bench.runner import run_bench

        config = self.recipe.bench
        json_path, html_path = self.root / "bench.json", self.root / "bench.html"
        key = self.cache.key("bench", variants={v.name: _digest(Path(v.artifact)) for v in passed}, config=config)

        def run():
            options = self.bench_options()
            extra = []
            if config.get("baseline") == "torch":
                from .baseline import torch_baseline

                extra.append(torch_baseline(passed[0].artifact, "cpu", options.thread_count()[0]))
            report = run_bench([v.artifact for v in passed], options, extra, progress=self.say)
            if report.interrupted:       # Ctrl-C mid-bench: a partial report is no step output, nor cached
                for written in report.written:
                    Path(written).unlink(missing_ok=True)
                raise KeyboardInterrupt

        self.step("bench", key, json_path, run, dry_run, still_valid=html_path.is_file)
        return json_path, html_path

    def package(self, passed: list[VariantResult], dry_run: bool) -> str | None:
        from ..package import TritonOptions
        from ..package.bundle import package_bundle
        from ..package.triton import package_triton_models

        triton = None
        for variant in passed:
            if "bundle" in self.recipe.formats:
                path = self.root / "bundles" / f"{variant.name}.tar.gz"
                self.step(f"bundle {variant.name}", self.cache.key("bundle", manifest=_digest(Path(variant.artifact))), path,
                          lambda v=variant, p=path: package_bundle(v.artifact, p, force=True), dry_run)
                variant.bundle = str(path)
        generative = any(_task(Path(v.artifact)) == "text-generation" for v in passed)
        if "triton" in self.recipe.formats and passed and not generative:
            triton_path = self.root / "triton"
            models = {v.name.replace("-", "_"): v.artifact for v in passed}
            self.step("triton", self.cache.key("triton", models={n: _digest(Path(p)) for n, p in models.items()}),
                      triton_path,
                      lambda: package_triton_models(models, triton_path, TritonOptions(), force=True), dry_run)
            triton = str(triton_path)
        return triton

    def drop_stale_bundles(self, failed: list[VariantResult], dry_run: bool) -> None:
        """A variant that fails now loses the bundle an earlier run made of it, and so does one
        the recipe no longer lists: the output holds what passed this run, and nothing that did
        not.  A variant whose folder ship was refused to replace (files of the user's in it) was
        not judged: its bundle stays."""
        if dry_run:
            return
        why = {v.name: f"{v.name} did not pass this run" for v in failed if v.failure_kind is not OutputExistsError}
        listed = {v.name for v in self.recipe.variants}
        for step in self.cache.steps("bundle "):
            name = step.removeprefix("bundle ")
            if name not in listed:
                why[name] = f"{name} is no longer in the recipe"
        for name, reason in why.items():
            stale = self.root / "bundles" / f"{name}.tar.gz"
            if stale.is_file() and self.cache.wrote(f"bundle {name}", stale):
                stale.unlink()
                self.say(f"[removed] bundles/{stale.name}: {reason}")
            self.cache.forget(f"bundle {name}")

    def platforms(self, passed: list[VariantResult]) -> list[str]:
        failures = []
        if not self.recipe.platforms:
            return failures
        from ..platforms import verify_on_platform

        for variant in passed:
            if not variant.bundle:
                failures.append(f"{variant.name}: verify on {', '.join(self.recipe.platforms)} needs a bundle "
                                "(add 'bundle' to package.formats)")
                continue
            for platform in self.recipe.platforms:
                self.say(f"[run] verify {variant.name} on {platform} (emulated)")
                report = verify_on_platform(variant.bundle, platform)
                variant.platforms[platform] = report.to_dict()
                if not report.passed:
                    failures.append(f"{variant.name}: parity on {platform} failed: {'; '.join(report.failures)}")
        return failures


def _digest(artifact: Path) -> str:
    """The artifact's manifest digest, or "" when it is not made yet (a --dry-run plan)."""
    if not (artifact / "edgeport.json").is_file():
        return ""
    return Artifact.load(artifact, check_files=False).manifest_sha256


def _weights_differ(source: Path, exported: Path) -> list[str]:
    """The source's weight files whose bytes are not those the export recorded reading."""
    if not (exported / "edgeport.json").is_file():
        return []
    from ..manifest import sha256_file

    recorded = Artifact.load(exported, check_files=False).manifest.export_entry().get("sources") or {}
    folder = source if source.is_dir() else source.parent          # a .keras file is its own source
    return [name for name, sha in sorted(recorded.items()) if len(str(sha)) == 64      # a factory records its name
            and (not (folder / name).is_file() or sha256_file(folder / name) != sha)]


def _task(artifact: Path) -> str | None:
    if not (artifact / "edgeport.json").is_file():
        return None
    return Artifact.load(artifact, check_files=False).task


def _speed_and_size(result: ShipResult, recipe: Recipe, bench_json: Path | None) -> None:
    from ..bench.runner import folder_name            # how the bench names a variant

    source_bytes = sum(p.stat().st_size for p in recipe.source_model.glob("*.safetensors"))
    report = json.loads(bench_json.read_text()) if bench_json and bench_json.is_file() else {}
    rows = report.get("results", [])
    result.bench_warnings = list(report.get("warnings", []))
    single = {r["variant"]: r for r in rows if r["scenario"] in ("single-stream", "generation")}
    # The PyTorch row by its kind: a variant may be named "torch-int8" and a recipe may have no baseline.
    torch_rows = {v.get("name") for v in report.get("variants", []) if v.get("kind") == "torch"}
    torch_row = next((row for name, row in single.items() if name in torch_rows), None)
    for variant in result.variants:
        row = single.get(folder_name(Path(variant.artifact)) if variant.artifact else None)
        variant.p50_ms = row["latency"]["p50_ms"] if row else None
        if torch_row and row:
            variant.speedup_vs_pytorch = _speedup(row, torch_row)
        if source_bytes and variant.size_bytes:
            variant.size_vs_pytorch = variant.size_bytes / source_bytes


def _speedup(row: dict, baseline: dict) -> float | None:
    """``row``'s speed-up over ``baseline`` from the bench's own paired figures, both against the
    same variant: on a busy machine the bench measures them from on-CPU time, where a ratio of
    wall-clock p50s printed PyTorch 110x slower (its OpenMP threads waited out the other load)."""
    mine, theirs = row.get("speedup") or {}, baseline.get("speedup") or {}
    if mine.get("value") and theirs.get("value") and mine.get("vs") == theirs.get("vs"):
        return mine["value"] / theirs["value"]
    if row["latency"].get("p50_ms") and baseline["latency"].get("p50_ms"):
        return baseline["latency"]["p50_ms"] / row["latency"]["p50_ms"]
    return None


def ship(recipe: Recipe, force: bool = False, dry_run: bool = False,
         progress: Callable[[str], None] = lambda message: None) -> ShipResult:
    """Run ``recipe`` (or, with ``dry_run``, only say which steps would run)."""
    check_output(recipe.output, True, _inputs(recipe), SHIP_FOLDER,
                 option="output folder (-o, or the recipe's 'output')")
    shipment = Shipment(recipe, force, progress)
    created = [] if dry_run else make_folders(recipe.output.absolute())
    try:
        with _only_run(recipe.output, dry_run), instead_say("give ship another output folder (-o)"):
            return _run(recipe, shipment, dry_run)
    except KeyboardInterrupt:
        remove_created_folders(created)        # where nothing was kept in them
        if dry_run or not shipment.finished:
            raise StoppedByUser("interrupted; nothing was written") from None
        raise StoppedByUser(f"interrupted; the finished steps are kept in '{recipe.output}' and the next run takes "
                            f"them from its cache ({', '.join(shipment.finished)}); the step in progress left nothing "
                            "behind") from None
    except BaseException:
        remove_created_folders(created)
        raise


@contextlib.contextmanager
def _only_run(output: Path, dry_run: bool):
    """Hold the output folder for this run: two ships writing one folder ended both exit 0
    with bundles of the other's model, or a summary listing a bundle the other deleted."""
    if dry_run:
        yield
        return
    import fcntl
    import os

    folder = os.open(output, os.O_RDONLY | os.O_DIRECTORY)     # the folder itself: no lock file left behind
    try:
        try:
            fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputExistsError(f"another ship is writing '{output}' now; wait for it to finish, or give this "
                                    "one another output folder (-o)") from None
        except OSError:
            pass                  # a file system without locks (some network mounts): unguarded, as before
        yield
    finally:
        os.close(folder)          # and the lock with it (or with the process, however it ends)


def _run(recipe: Recipe, shipment: Shipment, dry_run: bool) -> ShipResult:
    start = time.perf_counter()
    if not dry_run:               # the last run's summary no longer holds once this one changes anything
        (recipe.output / SUMMARY).unlink(missing_ok=True)
    source = shipment.source(dry_run)
    fp32 = shipment.export(source, dry_run)
    shipment.check_exported(fp32, dry_run)
    results = [shipment.variant(v, fp32, dry_run) for v in recipe.variants]
    result = ShipResult(recipe.where, str(recipe.output), results)
    passed = [r for r in results if r.passed]
    for failed in (r for r in results if r.failure):
        result.add_failures([failed.failure], failed.failure_kind)
    bench = shipment.bench(passed, dry_run)
    result.triton = shipment.package(passed, dry_run)
    shipment.drop_stale_bundles([r for r in results if not r.passed], dry_run)
    if dry_run:
        result.plan = shipment.plan + [(f"verify on {p}", False) for p in recipe.platforms]
        return result
    if bench:
        result.bench_json, result.bench_html = (str(p) for p in bench)
        result.add_failures(_regressions(recipe, bench[0], passed), RegressionError)
    result.add_failures(shipment.platforms(passed), ParityError)
    _speed_and_size(result, recipe, bench[0] if bench else None)
    result.seconds = time.perf_counter() - start
    (recipe.output / SUMMARY).write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    return result


def _inputs(recipe: Recipe) -> tuple:
    sources = [] if recipe.model.startswith("bundled:") else [recipe.model]
    return tuple(sources + list(recipe.adapters))


def _regressions(recipe: Recipe, bench_json: Path, benched: list[VariantResult]) -> list[str]:
    """What fell behind ``gates.previous_report``; the variants that did are marked ``regressed``."""
    if not recipe.previous_report:
        return []
    from ..bench.compare import compare, load_report, parse_percent
    from ..bench.runner import folder_name            # how the bench names a variant

    comparison = compare(load_report(recipe.previous_report), load_report(bench_json),
                         parse_percent(recipe.max_regression), DEFAULT_MAX_PARITY_DROP)
    behind = {d.variant for d in comparison.deltas if d.regressed} | set(comparison.failed_parity)
    for variant in benched:
        variant.regressed = folder_name(Path(variant.artifact)) in behind
    try:
        comparison.raise_for_failure()
    except RegressionError as exc:
        return [f"regression against {recipe.previous_report}: {exc}"]
    return []
