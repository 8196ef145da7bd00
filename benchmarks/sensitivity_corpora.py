"""Does a sensitivity plan hold on sentences it has never seen? MiniLM on several text corpora.

Usage (CPU, a few minutes; the plan from a run of the sensitivity stage on data.corpus=pydoc)::

    HF_HUB_OFFLINE=1 python benchmarks/sensitivity_corpora.py --run outputs/<minilm run folder> \\
        --corpora pydoc docstrings comments --samples 320

For each corpus, ``--samples`` sentences of ``data=text data.corpus=<corpus>`` that the run never saw (neither its
evaluation nor its calibration samples; MiniLM's own tokenizer) are run
through FP32 and through the Q/DQ model the quantize stage writes (same calibration samples as the run) for:
the plan (``quant.plan``), the hand rule ``quant.keep_float=[ffn]`` with max calibration, and full INT8 with the
plan's base calibration; the last two also without outlier channel splitting (``quant.split_outliers=null``). Metrics are those of the quantize stage (ONNX Runtime, Q/DQ simulated in float): embedding
cosine and nearest-neighbour agreement with FP32. Writes ``benchmarks/results/sensitivity_minilm_corpora.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.core.artifacts import write_json  # noqa: E402
from pipeline.core.config import DataConfig, ModelConfig, QuantConfig  # noqa: E402


def _eval_set(run: Path, corpus: str, n: int):
    """``n`` sentences of ``corpus`` that the run never saw: none of its evaluation (search and held-out) or
    calibration samples. The run's own corpus gives the sentences after its evaluation set in the same seeded order."""
    import numpy as np

    from pipeline.data import load_dataset
    from pipeline.export.stage import input_specs, read_summary
    from pipeline.models import build_model

    specs = input_specs(read_summary(run / "export.json"))
    tok = build_model(ModelConfig(name="minilm", input_kind="tokens", input_shape=[128], vocab_size=30522,
                                  pretrained=True)).tokenizer
    seen_sets = [np.load(run / "data" / f"{split}.npz")["input_ids"] for split in ("eval", "calib")]
    seen = {r.tobytes() for ids in seen_sets for r in ids}
    ask = n + len(seen_sets[0])
    ds = load_dataset(DataConfig(name="text", corpus=corpus, num_samples=ask, calib_samples=len(seen_sets[1]), seed=0),
                      specs, split="eval", num_samples=ask, tokenizer=tok)
    keep = np.array([i for i, r in enumerate(ds.inputs["input_ids"]) if r.tobytes() not in seen][:n])
    if len(keep) < n:
        raise SystemExit(f"{corpus}: only {len(keep)} sentences the run has not seen; lower --samples")
    return type(ds)(ds.name, {k: v[keep] for k, v in ds.inputs.items()}, None, ds.description)


def _name_and_json(item: str):
    """``NAME={...}`` -> (NAME, dict); the name may hold ``=`` itself (split at the first ``={``)."""
    name, sep, text = item.partition("={")
    if not sep:
        raise SystemExit(f"--extra-configs {item!r}: expected NAME={{json}}")
    return name, json.loads("{" + text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="run folder with minilm.onnx, data/ and the plan")
    ap.add_argument("--corpora", nargs="+", default=["pydoc", "docstrings", "comments"])
    ap.add_argument("--samples", type=int, default=320)
    ap.add_argument("--extra-plans", nargs="*", default=[], metavar="NAME=PLAN.json",
                    help="other plan files for the same ONNX to compare (e.g. from a run with other settings)")
    ap.add_argument("--extra-configs", nargs="*", default=[], metavar="NAME=JSON",
                    help="other quant.* settings to compare, as JSON (e.g. 'ffn+attention={\"calib\": \"max\", "
                         "\"keep_float\": [\"ffn\", \"attention_scores\"]}'): how far float layers alone can go")
    ap.add_argument("--only", nargs="*", default=None, metavar="NAME",
                    help="run only these variants (e.g. 'plan' 'plan v7' 'keep_float=[ffn], max')")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "sensitivity_minilm_corpora.json")
    args = ap.parse_args()

    from pipeline.core.datasets import load_dataset_file
    from pipeline.quantize import quantize_onnx

    onnx = args.run / "minilm.onnx"
    plan_path = args.run / "minilm.precision_plan.json"
    plan = json.loads(plan_path.read_text())
    base = sorted(set(plan["calibration"].values()))
    calib = list(load_dataset_file(args.run / "data" / "calib.npz").batches(32))
    variants = {"plan": QuantConfig(plan=str(plan_path)),
                "keep_float=[ffn], max": QuantConfig(calib="max", keep_float=["ffn"]),
                f"full INT8, {'/'.join(base)}": QuantConfig(calib=base[0]) if len(base) == 1 else None,
                # what outlier channel splitting (quant.split_outliers, on by default) changes
                "full INT8, max, no split": QuantConfig(calib="max", split_outliers=None),
                "keep_float=[ffn], max, no split": QuantConfig(calib="max", keep_float=["ffn"], split_outliers=None)}
    for item in args.extra_plans:
        name, _, path = item.partition("=")
        variants[f"plan {name}"] = QuantConfig(plan=path)
    configs = dict(_name_and_json(item) for item in args.extra_configs)
    for name, settings in configs.items():
        variants[name] = QuantConfig(**settings)
    if args.only is not None:
        unknown = sorted(set(args.only) - set(variants))
        if unknown:
            raise SystemExit(f"--only: unknown variant(s) {unknown}; known: {sorted(variants)}")
        variants = {k: v for k, v in variants.items() if k in args.only}
    rows = {}
    for corpus in args.corpora:
        ds = _eval_set(args.run, corpus, args.samples)
        rows[corpus] = {}
        for name, cfg in variants.items():
            if cfg is None:
                continue
            res = quantize_onnx(onnx, calib, cfg, Path("/tmp") / f"corpora-{os.getpid()}.onnx",
                                eval_batches=list(ds.batches(32)), task="embedding", progress=False)
            m = res.metrics
            rows[corpus][name] = {"embedding_cosine": m["embedding_cosine"], "nn_agreement": m["nn_agreement"],
                                  "samples": m["samples"], "float_layers": len(res.plan["skipped_nodes"]),
                                  "split_tensors": len(res.splits),
                                  "extra_channels": sum(int(r["extra_channels"]) for r in res.splits)}
            print(corpus, name, {k: round(v, 4) if isinstance(v, float) else v for k, v in rows[corpus][name].items()},
                  flush=True)
    write_json(args.out, {
        "benchmark": "MiniLM sensitivity plan on corpora it has not seen", "command": " ".join(map(shlex.quote, sys.argv)),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu_cores": os.cpu_count(), "python": platform.python_version()},
        "plan": {"float_layers": plan["float_layers"], "budget": plan["budget"], "search_metrics": plan["metrics"]},
        "extra_plans": {item.partition("=")[0]: {"path": item.partition("=")[2],
                                                   "float_layers": json.loads(Path(item.partition("=")[2]).read_text())["float_layers"]}
                        for item in args.extra_plans},
        "extra_configs": configs,
        "budget_check": "embedding_cosine >= 0.99 and nn_agreement >= 0.95 against FP32", "results": rows})


if __name__ == "__main__":
    main()
