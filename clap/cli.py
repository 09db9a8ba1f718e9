"""The ``clap`` command line: embeddings and zero-shot classification with a trained model.

    clap embed --model models/clap --audio a.wav b.flac --out audio.jsonl
    clap embed --model models/clap --text "a dog barks" "rain on a roof" --out text.npy
    clap zeroshot --model models/clap --labels dog,cat,rain clips/ --format csv --out predictions.csv
    clap zeroshot --model 630k-audioset-best.pt --tokenizer /models/roberta-base --labels dog,cat clips/

Audio files that cannot be read are skipped with their reason (on stderr and in ``<out>.errors.csv``)
and the rest are processed; the exit status is then 1. ``--strict`` stops at the first one instead.
Exit status 2: bad inputs (the message names the input and the fix).

Subcommands register themselves in ``SUBCOMMANDS`` (a name -> function adding an argparse sub-parser
whose ``func`` default runs it), so more can be added without touching ``main``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np
import soundfile as sf

if TYPE_CHECKING:  # torch is imported only when a model is loaded
    from clap.model.inference import SkippedAudio

logger = logging.getLogger("clap")

EMBED_FORMATS = (".jsonl", ".csv", ".npy")
#: Exit status when some audio files were skipped as unreadable (the others were processed).
EXIT_SKIPPED = 1


class CliError(Exception):
    """A problem with the command's inputs; the message names the input and the fix."""


# --- shared helpers -------------------------------------------------------------------------------


def audio_suffixes() -> set[str]:
    """File suffixes soundfile can decode (plus common aliases), used when a folder is given."""
    return {f".{name.lower()}" for name in sf.available_formats()} | {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif"}


def expand_audio_paths(paths: Sequence[str]) -> list[Path]:
    """Files as given, folders expanded to their audio files (recursively, sorted)."""
    suffixes = audio_suffixes()
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
            if not found:
                raise CliError(f"{path}: folder has no audio files ({', '.join(sorted(suffixes))})")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise CliError(f"{path}: no such file or folder (check the path)")
    if not out:
        raise CliError("no audio files given")
    return out


def read_labels(labels: str | None, labels_file: str | None) -> list[str]:
    """Class labels from ``a,b,c`` or a file: one label per line, or JSON (a list, or a
    ``{label: index}`` mapping such as the reference's class_labels/*.json, ordered by index)."""
    if labels:
        parsed = [label.strip() for label in labels.split(",") if label.strip()]
    elif labels_file:
        path = Path(labels_file)
        if not path.is_file():
            raise CliError(f"{path}: labels file not found (give one label per line, or a JSON list)")
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise CliError(f"{path}: not valid JSON ({exc}); give a list of labels or a {{label: index}} map") from exc
            if isinstance(data, dict):
                parsed = [str(k) for k, _ in sorted(data.items(), key=lambda kv: kv[1])]
            elif isinstance(data, list):
                parsed = [str(v) for v in data]
            else:
                raise CliError(f"{path}: expected a JSON list of labels or a {{label: index}} map")
        else:
            parsed = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        raise CliError("give the classes with --labels a,b,c or --labels-file FILE")
    if not parsed:
        raise CliError("the label list is empty")
    duplicates = sorted({label for label in parsed if parsed.count(label) > 1})
    if duplicates:
        raise CliError(f"duplicate labels {duplicates}; give each class once")
    return parsed


def _load(args: argparse.Namespace):  # -> ClapInference (imported lazily: torch/transformers are slow to import)
    from clap.model.inference import ClapInference

    model_path = Path(args.model)
    if not model_path.exists():
        raise CliError(f"{model_path}: no such model (give a model folder, a LAION-CLAP .pt or a transformers CLAP folder)")
    return ClapInference(
        model_path, device=args.device, batch_size=args.batch_size, allow_download=args.allow_download,
        tokenizer=args.tokenizer,
    )


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder (ours or transformers) or a LAION-CLAP .pt")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--batch-size", type=int, default=16, help="clips per forward pass (default 16)")
    parser.add_argument(
        "--tokenizer", default=None, metavar="FOLDER",
        help="tokenizer folder replacing the model's (a LAION-CLAP .pt needs roberta-base's, e.g. /models/roberta-base)",
    )
    parser.add_argument(
        "--allow-download", action="store_true", help="let a missing tokenizer come from the Hugging Face hub"
    )


def _add_unreadable_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first unreadable audio file (default: skip it, exit status 1)")
    parser.add_argument("--errors", metavar="FILE",
                        help="CSV of skipped files and reasons (default: <out>.errors.csv; stderr only without --out)")


def errors_file(args: argparse.Namespace) -> Path | None:
    """Where the skipped files are listed: ``--errors``, else beside ``--out``, else nowhere."""
    if args.errors:
        return Path(args.errors)
    return Path(f"{args.out}.errors.csv") if args.out else None


def report_skipped(command: str, skipped: list[SkippedAudio], total: int, errors: Path | None) -> int:
    """Tell the user which files were skipped and why (stderr, and the errors CSV); the exit status.

    No skipped file: an errors CSV left by an earlier run is removed and 0 is returned."""
    if not skipped:
        if errors is not None and errors.is_file():
            errors.unlink()
        return 0
    rows = []
    for entry in skipped:
        reason = entry.reason.removeprefix(f"{entry.item}: ")
        rows.append((entry.item, reason))
        print(f"clap {command}: skipped {entry.item}: {reason}", file=sys.stderr)
    if errors is not None:
        errors.parent.mkdir(parents=True, exist_ok=True)
        with errors.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "reason"])
            writer.writerows(rows)
    where = f"; listed in {errors}" if errors is not None else ""
    if len(skipped) == total:
        raise CliError(f"none of the {total} audio files could be read{where} (reasons above)")
    print(f"clap {command}: {len(skipped)} of {total} audio files skipped as unreadable{where}; "
          "the others were processed (use --strict to stop at the first)", file=sys.stderr)
    return EXIT_SKIPPED


def _open_out(out: str | None) -> contextlib.AbstractContextManager[TextIO]:
    """The output file (parents created), or standard output left open afterwards."""
    if out is None:
        return contextlib.nullcontext(sys.stdout)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("w", encoding="utf-8", newline="")


# --- clap embed -----------------------------------------------------------------------------------


def write_embeddings(out: Path, keys: list[str], key_name: str, embeddings: np.ndarray) -> None:
    """Write embeddings by the file's suffix: .jsonl (one object per item), .csv (key, e0..eN), .npy."""
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    if suffix == ".npy":
        np.save(out, embeddings.astype(np.float32))
    elif suffix == ".jsonl":
        with out.open("w", encoding="utf-8") as fh:
            for key, row in zip(keys, embeddings):
                fh.write(json.dumps({key_name: key, "embedding": [float(v) for v in row]}) + "\n")
    elif suffix == ".csv":
        with out.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow([key_name] + [f"e{i}" for i in range(embeddings.shape[1])])
            for key, row in zip(keys, embeddings):
                writer.writerow([key] + [repr(float(v)) for v in row])
    else:
        raise CliError(f"{out}: unknown output format '{suffix}'; use one of {', '.join(EMBED_FORMATS)}")


def run_embed(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix.lower() not in EMBED_FORMATS:
        raise CliError(f"{out}: unknown output format '{out.suffix}'; use one of {', '.join(EMBED_FORMATS)}")
    status = 0
    if args.audio:
        paths = expand_audio_paths(args.audio)
        engine = _load(args)
        skipped: list[SkippedAudio] | None = None if args.strict else []
        embeddings = engine.embed_audio(paths, skipped=skipped).numpy()
        status = report_skipped("embed", skipped or [], len(paths), errors_file(args))
        left_out = {entry.index for entry in skipped or []}
        keys, key_name = [str(p) for i, p in enumerate(paths) if i not in left_out], "path"
    else:
        texts = list(args.text or [])
        if args.text_file:
            path = Path(args.text_file)
            if not path.is_file():
                raise CliError(f"{path}: text file not found (one text per line)")
            texts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not texts:
            raise CliError("no texts given (use --text TEXT... or --text-file FILE)")
        engine = _load(args)
        embeddings = engine.embed_text(texts).numpy()
        keys, key_name = texts, "text"
    write_embeddings(out, keys, key_name, embeddings)
    logger.info("wrote %d embeddings (%d-d) to %s", len(keys), embeddings.shape[1], out)
    return status


def add_embed_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "embed",
        help="audio or text embeddings",
        description="Embed audio files (or folders of them) or texts; unit-length vectors in input order.",
    )
    _add_model_args(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--audio", nargs="+", metavar="FILE", help="audio files or folders")
    source.add_argument("--text", nargs="+", metavar="TEXT", help="texts to embed")
    source.add_argument("--text-file", metavar="FILE", help="a file with one text per line")
    parser.add_argument("--out", required=True, help="output file: .jsonl, .csv or .npy (rows in input order)")
    _add_unreadable_args(parser)
    parser.set_defaults(func=run_embed)


# --- clap zeroshot --------------------------------------------------------------------------------


def run_zeroshot(args: argparse.Namespace) -> int:
    labels = read_labels(args.labels, args.labels_file)
    paths = expand_audio_paths(args.files)
    if args.top_k < 1:
        raise CliError(f"--top-k must be at least 1, got {args.top_k}")
    engine = _load(args)
    skipped: list[SkippedAudio] | None = None if args.strict else []
    result = engine.zero_shot(paths, labels, template=args.template, skipped=skipped)
    status = report_skipped("zeroshot", skipped or [], len(paths), errors_file(args))
    left_out = {entry.index for entry in skipped or []}
    paths = [p for i, p in enumerate(paths) if i not in left_out]
    probs = result.probabilities.numpy()
    top = result.top_k(args.top_k)
    with _open_out(args.out) as fh:
        if args.format == "json":
            records = [
                {
                    "path": str(path),
                    "top": [{"label": label, "probability": p} for label, p in best],
                    "probabilities": {label: float(p) for label, p in zip(labels, row)},
                }
                for path, best, row in zip(paths, top, probs)
            ]
            json.dump({"labels": labels, "template": args.template, "results": records}, fh, indent=2)
            fh.write("\n")
        else:
            writer = csv.writer(fh)
            writer.writerow(["path", "prediction", "probability"] + labels)
            for path, best, row in zip(paths, top, probs):
                writer.writerow([str(path), best[0][0], f"{best[0][1]:.6f}"] + [f"{float(p):.6f}" for p in row])
    if args.out:
        logger.info("wrote %d predictions to %s", len(paths), args.out)
    return status


def add_zeroshot_parser(subparsers: argparse._SubParsersAction) -> None:
    from clap.model.inference import DEFAULT_TEMPLATE

    parser = subparsers.add_parser(
        "zeroshot",
        help="zero-shot classification of audio files",
        description="Classify audio files among labels by similarity to 'This is a sound of {label}.'",
    )
    _add_model_args(parser)
    labels = parser.add_mutually_exclusive_group(required=True)
    labels.add_argument("--labels", help="comma-separated class labels, e.g. dog,cat,rain")
    labels.add_argument("--labels-file", help="one label per line, or JSON (a list or a {label: index} map)")
    parser.add_argument("files", nargs="+", metavar="FILE", help="audio files or folders")
    parser.add_argument("--template", default=DEFAULT_TEMPLATE, help="text per class (default: %(default)r)")
    parser.add_argument("--top-k", type=int, default=3, help="labels listed per clip in JSON (default 3)")
    parser.add_argument("--format", choices=("json", "csv"), default="json", help="output format (default json)")
    parser.add_argument("--out", help="output file (default: standard output)")
    _add_unreadable_args(parser)
    parser.set_defaults(func=run_zeroshot)


#: Subcommands of ``clap``: name -> function that adds its sub-parser (with a ``func`` default).
SUBCOMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "embed": add_embed_parser,
    "zeroshot": add_zeroshot_parser,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clap", description="CLAP: contrastive language-audio pre-training")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS.values():
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``clap`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (CliError, ValueError, OSError) as exc:  # bad inputs: CheckpointError, AudioDecodeError, missing files
        logger.debug("traceback", exc_info=True)
        print(f"clap {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
