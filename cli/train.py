"""`omnivox train RECIPE.yaml [key=value ...]`, `omnivox prepare RECIPE.yaml MANIFEST`, `omnivox synth-data DIR`.

`train` is the one launcher for a single process and for `torchrun --nproc_per_node N -m omnivox.cli.main
train ...` (the process group is joined from torchrun's environment)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train", help="train a model from a recipe (single process or under torchrun)",
        description="Run a training recipe (recipes/*.yaml). Overrides: key.sub=value (YAML values), e.g. "
        "training.max_steps=10 resume=auto progress=false. Under torchrun the run is data-parallel (DDP, or "
        "training.distributed=fsdp). The recipe's trainer._component_ names the recipe object that runs the "
        "steps (omnivox.training.trainer.TrainingRecipe or a subclass).")
    train.add_argument("recipe", help="recipe YAML")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")
    train.add_argument("--print-recipe", action="store_true", help="print the resolved recipe and exit")
    train.set_defaults(func=run_train)

    prep = subparsers.add_parser(
        "prepare", help="encode a manifest's audio into codec frames / encoder features (cached)",
        description="Encode answer audio to codec frames and question audio to encoder features with the "
        "recipe's prepare.codec / prepare.encoder plugins; writes MANIFEST.prepared.jsonl for training.")
    prep.add_argument("recipe", help="recipe YAML (its prepare: section names the codec and the encoder)")
    prep.add_argument("manifest", help="JSONL manifest to prepare")
    prep.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")
    prep.add_argument("--out", help="prepared manifest path (default MANIFEST.prepared.jsonl)")
    prep.set_defaults(func=run_prepare)

    synth = subparsers.add_parser(
        "synth-data", help="build a small spoken Q->A set with espeak-ng",
        description="Write DIR/audio/*.wav and DIR/manifest.jsonl: spoken sums ('what is two plus three') "
        "and answers, as ASR, TTS, spoken-QA-to-text and spoken-QA-to-speech examples. Deterministic.")
    synth.add_argument("out_dir", help="output folder")
    synth.add_argument("--pairs", type=int, default=12, help="question/answer pairs (4 examples each)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--voice", default="en-us", help="espeak-ng voice")
    synth.add_argument("--corpus", nargs="?", const="", metavar="CONFIG.yaml",
                       help="build the configurable corpus instead (training/corpus.py: voices, rates, pitches, "
                       "noise, reverb, sentence-level splits; codec, ASR and Q->A manifests), from the defaults "
                       "or CONFIG.yaml's keys")
    synth.add_argument("--set", action="append", default=[], metavar="key=value", help="corpus config override")
    synth.set_defaults(func=run_synth)


def run_train(args: argparse.Namespace) -> int:
    from omnivox.training.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    if args.print_recipe:
        print(recipe.to_yaml())
        return 0
    from omnivox.training.trainer import train

    train(recipe)
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    from omnivox.training.prepare import prepare
    from omnivox.training.recipe import load_recipe

    prepare(load_recipe(args.recipe, args.overrides), args.manifest, args.out)
    return 0


def run_synth(args: argparse.Namespace) -> int:
    if args.set and args.corpus is None:
        from omnivox.core.errors import ConfigError

        raise ConfigError("--set is given without --corpus", "add --corpus (the overrides are corpus settings)")
    if args.corpus is not None:
        from omnivox.training.corpus import build_corpus, load_corpus_config

        print(f"wrote {build_corpus(args.out_dir, load_corpus_config(args.corpus or None, args.set))}")
        return 0
    from omnivox.training.synthetic import build_synthetic

    path = build_synthetic(args.out_dir, pairs=args.pairs, seed=args.seed, voice=args.voice)
    print(f"wrote {path}")
    return 0
