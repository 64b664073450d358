"""Caption metrics through ``pycocoevalcap`` (the COCO caption evaluation code, as the papers use).

Candidates and references are lower-cased and tokenised by its PTB tokenizer (Stanford CoreNLP
3.4.1, in Java), then scored by its ``Bleu(4)``, ``Meteor`` (METEOR 1.5, Java), ``Cider`` (CIDEr-D:
n = 1..4, sigma = 6, clipped counts, x10, document frequencies from the references of the scored
set) and ``Spice`` (SPICE 1.0, Java, which needs Stanford CoreNLP 3.6.0's two jars; pycocoevalcap
would download them, we never do: copy them from ``$NEXTGPT_CORENLP_DIR``). SPIDEr is the mean of
CIDEr-D and SPICE, as Liu et al. (2017) define it and the AudioCaps/DCASE evaluation reports it.

Values are on pycocoevalcap's scale (BLEU, METEOR, SPICE in [0, 1]; CIDEr around 0..10): the
report scales them as each paper table prints them.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from nextgpt.errors import ExtractorWeightsError, InputError

CAPTION_METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "cider", "spice", "spider")
CORENLP_ENV = "NEXTGPT_CORENLP_DIR"
SPICE_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


def java_version() -> str:
    """The ``java -version`` line, or an :class:`ExtractorWeightsError` saying how to install Java."""
    java = shutil.which("java")
    if java is None:
        raise ExtractorWeightsError(
            "caption metrics need Java (pycocoevalcap's PTB tokenizer, METEOR and SPICE run on it): "
            "install a JRE, e.g. Debian's default-jre-headless (make install does when apt-get is there)"
        )
    return _java_version(java)


@functools.lru_cache(maxsize=4)
def _java_version(java: str) -> str:
    """``java -version`` of the binary at ``java``, run once per binary (a JVM start is ~0.3 s)."""
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    text = out.stderr or out.stdout
    return text.splitlines()[0].strip() if text else java


def _spice_ready() -> None:
    """Put CoreNLP 3.6.0 where pycocoevalcap's SPICE looks, from ``$NEXTGPT_CORENLP_DIR``; never download."""
    import pycocoevalcap.spice as spice_pkg

    lib = Path(spice_pkg.__file__).parent / "lib"
    if all((lib / j).is_file() for j in SPICE_JARS):
        return
    src = os.environ.get(CORENLP_ENV)
    if not src or not all((Path(src) / j).is_file() for j in SPICE_JARS):
        raise ExtractorWeightsError(
            f"SPICE (and SPIDEr) need Stanford CoreNLP 3.6.0: put {' and '.join(SPICE_JARS)} in a folder "
            f"and set {CORENLP_ENV} to it (from stanford-corenlp-full-2015-12-09.zip; nothing is downloaded), "
            "or leave spice/spider out of --metrics"
        )
    for j in SPICE_JARS:
        shutil.copyfile(Path(src) / j, lib / j)


def _check(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> list[str]:
    if not predictions:
        raise InputError("no predictions to score")
    missing = [k for k in predictions if k not in references]
    if missing:
        raise InputError(f"{len(missing)} prediction id(s) have no references, e.g. {missing[0]!r}")
    for k, refs in references.items():
        if k in predictions and (not refs or not all(isinstance(r, str) for r in refs)):
            raise InputError(f"sample {k!r}: references must be a non-empty list of str")
    for k, v in predictions.items():
        if not isinstance(v, str):
            raise InputError(f"sample {k!r}: the prediction must be a str, got {type(v).__name__}")
    return list(predictions)


def caption_scores(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    metrics: Sequence[str] = ("bleu4", "meteor", "cider"),
) -> dict[str, float]:
    """Corpus-level caption metrics of ``predictions`` (id -> caption) against ``references``.

    Args:
        predictions: one candidate caption per sample id.
        references: the reference captions of every predicted id.
        metrics: names from :data:`CAPTION_METRICS`.

    Returns:
        ``{metric: value}`` on pycocoevalcap's scale.

    Raises:
        InputError: empty or mismatched predictions / references, an unknown metric.
        ExtractorWeightsError: Java is missing, or SPICE's CoreNLP jars are (for spice / spider).
    """
    unknown = [m for m in metrics if m not in CAPTION_METRICS]
    if unknown:
        raise InputError(f"unknown caption metric(s) {unknown}; choose from {', '.join(CAPTION_METRICS)}")
    ids = _check(predictions, references)
    java_version()
    if {"spice", "spider"} & set(metrics):
        _spice_ready()
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # pycocoevalcap prints progress to stdout; keep the CLI's output to our own lines.
    with contextlib.redirect_stdout(io.StringIO()):
        tok = PTBTokenizer()
        gts = tok.tokenize({k: [{"caption": r} for r in references[k]] for k in ids})
        res = tok.tokenize({k: [{"caption": predictions[k]}] for k in ids})
        # the tokenizer may turn a caption of punctuation only into "": the scorers need a string
        res = {k: v if v else [""] for k, v in res.items()}
        out: dict[str, float] = {}
        if any(m.startswith("bleu") for m in metrics):
            from pycocoevalcap.bleu.bleu import Bleu

            bleu, _ = Bleu(4).compute_score(gts, res)
            for n in range(4):
                out[f"bleu{n + 1}"] = float(bleu[n])
        if "meteor" in metrics:
            from pycocoevalcap.meteor.meteor import Meteor

            scorer = Meteor()  # a Java subprocess, ended when the scorer is collected
            out["meteor"] = float(scorer.compute_score(gts, res)[0])
            del scorer
        if {"cider", "spider"} & set(metrics):
            from pycocoevalcap.cider.cider import Cider

            out["cider"] = float(Cider().compute_score(gts, res)[0])
        if {"spice", "spider"} & set(metrics):
            from pycocoevalcap.spice.spice import Spice

            out["spice"] = float(Spice().compute_score(gts, res)[0])
    if "spider" in metrics:
        out["spider"] = (out["cider"] + out["spice"]) / 2.0
    return {m: out[m] for m in metrics}
