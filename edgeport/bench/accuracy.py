"""What a bench run says about faithfulness beside speed: every variant's parity against the
reference on the same real data, worst-case parity on held-out text domains (--domains),
and top-1 accuracy against true labels (--labels)."""

from __future__ import annotations

import numpy as np

from ..artifact import Artifact
from ..data import examples_for
from ..errors import CalibrationDataError, InvalidOptionError
from ..parity import measure, reference_outputs
from ..runtime.formats import make_runner
from ..runtime.onnxrt import QUIET_CPU
from ..runtime.runner import Runner
from ..speed import Interrupted
from .report import BenchReport

LABELLED_TASKS = ("text-classification", "image-classification")   # one class per example


def read_bench_labels(reference: Artifact, options, count: int) -> np.ndarray | None:
    """The --labels, checked against the model and the data before anything is measured."""
    if not options.labels:
        return None
    from ..data import read_labels

    if reference.task not in LABELLED_TASKS:
        raise InvalidOptionError(f"--labels measures the accuracy of classifiers (one class per example); this is "
                                 f"a {reference.task} model")
    labels = read_labels(options.labels, reference.manifest.processing.get("labels"))
    if len(labels) != count:
        raise CalibrationDataError(f"'{options.labels}' has {len(labels)} labels but '{options.data}' holds "
                                   f"{count} examples")
    return labels


def _accuracy(runner: Runner, examples, labels: np.ndarray) -> dict:
    """Top-1 accuracy of the classifier's first output (its logits) against the true classes."""
    predicted = np.concatenate([np.asarray(next(iter(runner.run_in_rows(feeds).values()))).argmax(-1)
                                for feeds in examples.batches])
    return {"samples": len(labels), "top1": round(float((predicted == labels).mean()), 6)}


def measure_parity(report: BenchReport, variants: list, reference: Artifact, options,
                   labels: np.ndarray | None = None, longest: int | None = None) -> None:
    examples = examples_for(reference, options.data, role="eval", longest=longest)
    expected = _reference_outputs(reference, examples)
    try:
        for variant in variants:
            report.parity[variant.name] = measure(variant.runner, expected, examples, reference.task, options.budget,
                                                  reference_name=f"'{reference.path}'").to_dict()
            if labels is not None:
                report.parity[variant.name]["accuracy"] = _accuracy(variant.runner, examples, labels)
        _domain_parity(report, variants, reference, options, longest)
    except KeyboardInterrupt:
        raise Interrupted({}) from None


def _reference_outputs(reference: Artifact, examples) -> list[dict]:
    """The reference's outputs, in a quiet runner of its own (on the CPU; an engine on its GPU)."""
    with make_runner(reference, QUIET_CPU) as runner:
        return reference_outputs(runner, examples)


DOMAIN_SENTENCES = {"docstrings": 300, "legal": 300, "science": 140}


def _domain_parity(report: BenchReport, variants: list, reference: Artifact, options, longest: int | None) -> None:
    """Worst-case parity per held-out text domain: what a user sees on text unlike the
    calibration data (figures of the pooled embedding for feature extraction)."""
    if not options.domains:
        return
    from ..data.domains import domain_sentences

    for domain in options.domains:
        texts = domain_sentences(domain, DOMAIN_SENTENCES[domain])
        examples = examples_for(reference, texts=texts, description=f"{len(texts)} {domain} sentences",
                                longest=longest)
        expected = _reference_outputs(reference, examples)
        for variant in variants:
            figures = measure(variant.runner, expected, examples, reference.task).headline()
            report.parity[variant.name].setdefault("domains", {})[domain] = {
                "samples": len(texts), "mean_cosine": figures.mean_cosine, "p01_cosine": figures.p01_cosine,
                "min_cosine": figures.min_cosine}
