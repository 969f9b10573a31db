"""``edgemm train``."""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from edgemm._deps import require_all
from edgemm.cli import emit_json, json_option
from edgemm.errors import UsageError

# Options that shape a FusionModel; a Hugging Face checkpoint (--model) is trained as it is.
FUSION_ONLY = ("text", "image", "audio", "fusion", "fusion_dim", "freeze", "unfreeze_last")


def _none(value: str | None) -> str | None:
    return None if value in (None, "", "none") else value


@click.command("train")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path, file_okay=False, writable=True),
              help="Checkpoint directory to write.")
@click.option("--data", default="digit-match", show_default=True,
              help="'digit-match' (built in) or a dataset: .jsonl/.csv file or folder of split files.")
@click.option("--name", help="Model name (default: from the data).")
@click.option("--model", "hf_model", metavar="DIR",
              help="Fine-tune a Hugging Face checkpoint directory (text / image / audio classifier or its bare "
                   "encoder, e.g. BertModel) instead of a fusion model; 'minilm' = the packaged all-MiniLM-L6-v2.")
@click.option("--text", default="minilm", show_default=True, help="Text encoder: minilm, a local directory, or none.")
@click.option("--image", default="resnet-tiny", show_default=True,
              help="Image encoder: resnet-tiny, vit-tiny, convnext-tiny, a local directory, or none.")
@click.option("--audio", default="none", show_default=True, help="Audio encoder: logmel-cnn, wav2vec2-tiny, a directory, or none.")
@click.option("--fusion", type=click.Choice(["concat", "gated", "cross_attention"]), default="concat", show_default=True)
@click.option("--fusion-dim", type=click.IntRange(8, 4096), default=128, show_default=True)
@click.option("--freeze", multiple=True, type=click.Choice(["text", "image", "audio"]), help="Freeze an encoder (repeatable).")
@click.option("--unfreeze-last", type=click.IntRange(0, 64), help="Text encoder: train only its last N layers.")
@click.option("--method", type=click.Choice(["lora", "bitfit", "full"]),
              help="What trains: LoRA adapters (merged on save), BitFit (bias terms only) or everything; the new "
                   "head always trains. Default: lora (full with --no-lora).")
@click.option("--lora/--no-lora", default=True, show_default=True, help="LoRA adapters on the text encoder (merged on save).")
@click.option("--lora-r", type=click.IntRange(1, 256), default=8, show_default=True)
@click.option("--epochs", type=click.IntRange(1, 1000), default=6, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 4096), default=32, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True,
              help="Learning rate of new parts (head, fusion, LoRA adapters, BitFit's biases).")
@click.option("--encoder-lr", type=float, default=5e-5, show_default=True, help="Learning rate of pretrained weights.")
@click.option("--schedule", type=click.Choice(["linear", "cosine", "constant"]), default="linear", show_default=True)
@click.option("--warmup", type=click.FloatRange(0, 0.5), default=0.1, show_default=True)
@click.option("--patience", type=click.IntRange(1, 100), default=3, show_default=True, help="Early stopping patience (epochs).")
@click.option("--metric", type=click.Choice(["accuracy", "macro_f1"]), default="accuracy", show_default=True)
@click.option("--max-length", type=click.IntRange(4, 8192),
              help="Longest text in tokens (default: 32 for fusion models, 128 with --model).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-train-records", type=click.IntRange(2), help="Use only the first N training records (quick runs).")
@click.option("--allow-pickle", is_flag=True, help="--model: accept pickle weights (*.bin) when no safetensors exist.")
@json_option
@click.pass_context
def train(ctx: click.Context, output: Path, data: str, name: str | None, hf_model: str | None, text: str, image: str,
          audio: str, fusion: str, fusion_dim: int, freeze: tuple[str, ...], unfreeze_last: int | None,
          method: str | None, lora: bool, lora_r: int, epochs: int, batch_size: int, lr: float, encoder_lr: float,
          schedule: str, warmup: float, patience: int, metric: str, max_length: int | None, seed: int,
          max_train_records: int | None, allow_pickle: bool, as_json: bool) -> None:
    """Fine-tune a model and write a checkpoint directory for `edgemm export`.

    The defaults train the digit-match reference model: pretrained MiniLM-L6 text encoder with
    LoRA, a compact ResNet on the digit scans, concat fusion. With --model DIR a Hugging Face
    text, image or audio classifier is fine-tuned on the data's labels instead (LoRA, BitFit or
    full) and saved with its processor.
    """
    method = method or ("lora" if lora else "full")
    if hf_model is not None:
        given = [f"--{p.replace('_', '-')}" for p in FUSION_ONLY
                 if ctx.get_parameter_source(p) not in (ParameterSource.DEFAULT, None)]
        if given:
            raise UsageError(f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} to fusion models; "
                             "--model fine-tunes the checkpoint as it is.",
                             hint="Drop them, or drop --model to train a fusion model.")
    elif unfreeze_last is not None and ctx.get_parameter_source("method") == ParameterSource.COMMANDLINE \
            and method != "full":
        raise UsageError(f"--unfreeze-last and --method {method} both choose what trains.", hint="Give one of them.")
    elif method == "lora" and (_none(text) is None or unfreeze_last is not None):
        method = "full"  # LoRA adapts the text encoder; --unfreeze-last trains its last layers instead
    require_all("torch", "transformers", "safetensors", *(("peft",) if method == "lora" else ()), purpose="edgemm train")
    from edgemm.train.trainer import LoraOptions, TrainConfig
    from edgemm.train.trainer import train as run

    config = TrainConfig(
        output=output, data=data, name=name, model=hf_model, text=_none(text), image=_none(image), audio=_none(audio),
        fusion=fusion, fusion_dim=fusion_dim, freeze=freeze, unfreeze_last=unfreeze_last, method=method,
        lora=LoraOptions(r=lora_r, alpha=2 * lora_r) if method == "lora" else None,
        epochs=epochs, batch_size=batch_size, lr=lr, encoder_lr=encoder_lr, schedule=schedule, warmup=warmup,
        patience=patience, metric=metric, text_max_length=max_length, seed=seed, max_train_records=max_train_records,
        allow_pickle=allow_pickle,
    )
    report = run(config)
    if as_json:
        emit_json({"ok": True, **report.to_dict()})
        return
    click.echo(f"checkpoint  {report.checkpoint}")
    share = report.trainable
    if share:
        click.echo(f"trainable   {share['trainable']:,} of {share['total']:,} parameters "
                   f"({100 * share['fraction']:.3f} %, {share['method']})")
    click.echo(f"best epoch  {report.best_epoch} (val accuracy {report.val['accuracy']:.4f}, macro-F1 {report.val['macro_f1']:.4f})")
    if report.test:
        click.echo(f"test        accuracy {report.test['accuracy']:.4f}, macro-F1 {report.test['macro_f1']:.4f}")
    if report.added_tokens:
        click.echo(f"tokens      added {len(report.added_tokens)} the tokenizer did not know: {''.join(report.added_tokens)}")
    click.echo(f"time        {report.seconds:.0f} s")
