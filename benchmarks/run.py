"""Run a benchmark suite end to end and record its results for this machine.

    python benchmarks/run.py benchmarks/suites/reference-cpu.toml

Builds what the suite needs under ``benchmarks/.work/`` (the trained reference checkpoint, or the
random-weights large fusion model, and the exported bundle), runs ``edgemm bench`` with the
suite's options, peers, contention pass and workloads, checks the suite's ``[targets]``, writes ``bench.json``, ``bench.csv`` and the plots to
``benchmarks/results/<machine id>/<suite>/``, and regenerates the tables in
``benchmarks/README.md`` from every recorded result.
"""

from __future__ import annotations

import argparse
import logging
import sys

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from edgemm.bench.bench import BenchConfig, run_bench  # noqa: E402
from edgemm.bench.files import write_reports  # noqa: E402
from edgemm.bench.report import table  # noqa: E402
from edgemm.bench.runner import TimingOptions  # noqa: E402


def build_reference(work: Path) -> Path:
    """The digit-match reference checkpoint (``edgemm train`` defaults), trained once."""
    from edgemm.train.trainer import TrainConfig, train

    checkpoint = work / "reference-ckpt"
    if not (checkpoint / "training.json").is_file():
        train(TrainConfig(output=checkpoint))
    return checkpoint


def build_large_fusion(work: Path) -> Path:
    """BERT-base-sized text + ViT-B/16-sized vision encoders, random weights, concat fusion."""
    import torch
    import transformers as tf

    from edgemm.models.config import EncoderConfig, FusionConfig, FusionSpec, HeadSpec
    from edgemm.models.model import FusionModel
    from edgemm.models.processors import Processors
    from edgemm.train.presets import minilm_path

    checkpoint = work / "large-fusion-ckpt"
    if (checkpoint / "fusion_config.json").is_file():
        return checkpoint
    torch.manual_seed(0)
    tokenizer = tf.AutoTokenizer.from_pretrained(minilm_path())
    text = tf.BertConfig(vocab_size=tokenizer.vocab_size)  # BERT-base: 12 × 768, 12 heads
    vision = tf.ViTConfig(image_size=224, patch_size=16)    # ViT-B/16: 12 × 768, 12 heads
    config = FusionConfig(
        name="large-fusion",
        encoders={"text": EncoderConfig.from_hf_config("text", text),
                  "image": EncoderConfig.from_hf_config("image", vision)},
        fusion=FusionSpec(type="concat", dim=768, heads=12),
        head=HeadSpec(type="classification", hidden=768),
        labels=["no_match", "match"],
        text_max_length=128,
    )
    processors = Processors(tokenizer=tokenizer, image_processor=tf.ViTImageProcessor(size={"height": 224, "width": 224}))
    return FusionModel(config, processors).eval().save_pretrained(checkpoint)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", type=Path)
    parser.add_argument("--work", type=Path, default=HERE / ".work")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--reuse-bundle", action="store_true",
                        help="bench the bundle already exported under --work (build it only if missing)")
    parser.add_argument("--build-only", action="store_true", help="build the checkpoint and bundle, no bench")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    suite = tomllib.loads(args.suite.read_text(encoding="utf-8"))
    args.work.mkdir(parents=True, exist_ok=True)

    from edgemm.export.pipeline import ExportOptions, export_bundle
    from edgemm.recipes import load_recipe

    build = suite["build"]
    checkpoint = build_reference(args.work) if build["model"] == "reference" else build_large_fusion(args.work)
    target = build["target"]
    recipe = load_recipe(str(HERE.parent / target) if target.endswith(".toml") else target)
    bundle = args.work / f"{suite['name']}.bundle"
    if not (args.reuse_bundle and (bundle / "edgemm.json").is_file()):
        export_bundle(checkpoint, bundle,
                      options=ExportOptions(recipe=recipe, force=True, eval_data=build.get("eval_data")))
    if args.build_only:
        return

    options = suite["bench"]
    timing = TimingOptions(batch_sizes=tuple(options.get("batch_sizes", [1])), warmup=options.get("warmup", 5),
                           iterations=options.get("iterations", 50), rounds=options.get("rounds", 5))
    repeated = options.get("repeated_batch_sizes")
    report = run_bench(BenchConfig(bundle=bundle, device=options.get("device", "cpu"), timing=timing,
                                   peers=tuple(options.get("peers", [])), checkpoint=checkpoint,
                                   cold_runs=options.get("cold_runs", 3), eval_data=options.get("eval_data"),
                                   eval_limit=options.get("eval_limit", 1000), targets=suite.get("targets", {}),
                                   suite=suite["name"], contention=options.get("contention", False),
                                   workloads=tuple(options.get("workloads", ["standard"])),
                                   repeated_batch_sizes=tuple(repeated) if repeated else None))
    out = args.results / report.document["machine"]["id"] / suite["name"]
    for path in write_reports(report.document, out):
        print(f"wrote {path.relative_to(HERE.parent)}")
    print(table(report.document))

    from render import render

    render(args.results, HERE / "README.md")


if __name__ == "__main__":
    main()
